"""Runs moto's server with one correction so launches count as EC2 counts them.

moto's RunInstances launches MinCount instances and ignores MaxCount; real EC2
launches up to MaxCount when capacity allows. hostforge sends MinCount=1 and
MaxCount=N for a batch, so without this patch moto would answer with one
instance. Everything else is moto as published.
"""

import sys

from moto.ec2.responses import instances
from moto.server import main

_run_instances = instances.InstanceResponse.run_instances


def _run_instances_up_to_max(self):
    max_count = self._get_param("MaxCount")
    if max_count is not None:
        get_param = self._get_param

        def min_count_reads_as_max(name, if_none=None):
            if name == "MinCount":
                return max_count
            return get_param(name, if_none)

        self._get_param = min_count_reads_as_max
    return _run_instances(self)


instances.InstanceResponse.run_instances = _run_instances_up_to_max

if __name__ == "__main__":
    main(sys.argv[1:])

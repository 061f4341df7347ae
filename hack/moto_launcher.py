"""Runs moto's server with two corrections; everything else is moto as published.

1. Launches count as EC2 counts them. moto's RunInstances launches MinCount
   instances and ignores MaxCount; real EC2 launches up to MaxCount when
   capacity allows. hostforge sends MinCount=1 and MaxCount=N for a batch, so
   without this patch moto would answer with one instance.
2. A resource's tags are read from its own entry. moto 5.2.5 finds the tags of
   one instance by scanning every tag of every resource with a regex
   (TaggedEC2Resource.get_tags -> describe_tags(resource-id)), so rendering or
   tag-filtering n instances costs n x (all tags): at 2,000 instances one
   DescribeInstances took over 10 s, and at 10,000 it never finished. The
   replacement returns the same entries (same keys, same order) from the
   resource's own dict, which is what the resource-id filter selects.
3. Looking one instance or one volume up by id is a dict lookup. moto's
   get_instance copies and scans every reservation, and describe_volumes
   scans every volume; RunInstances calls both once per new instance (to
   attach and tag its root volume), so each launch got slower with every
   instance held (46 ms per RunInstances of 10 at 2,000 instances, 110 ms at
   8,000). Instances are indexed as they are first looked up (moto never
   removes one from its reservation); an id not found, several volume ids or
   filters take moto's own path, errors included.
4. DescribeInstances pages hold at most MaxResults instances. moto counts
   MaxResults in reservations, so a page of 1,000 reservations of 10
   instances is 10,000 instances: about 20 s of moto's serializer, past the
   operator's 10 s attempt timeout, retried forever. Pages here end at the
   reservation that reaches MaxResults instances (a reservation is never
   split), with the same NextToken scheme.
5. One request at a time. moto's models are not thread-safe and its server
   runs a thread per request: under a burst of concurrent launches a subnet's
   free-address set was popped empty by two threads at once
   (`KeyError: 'pop from an empty set'` in get_available_subnet_ip) and a
   generator was re-entered (`ValueError: generator already executing`). A
   CreateFleet that fails that way has already made some of its instances
   but never registers its fleet, and every later TerminateInstances of those
   instances then fails with a 500 (`'NoneType' object has no attribute
   'launch_specs'`): machines nobody can remove. The GIL serializes moto's
   work anyway, so a lock around each request costs no throughput. SQS calls
   are left out: a long-polling ReceiveMessage holds its request for up to
   20 s, and the interruption queue's consumer always has one open.
6. Terminating an instance whose fleet moto does not know (an instance left
   by such a half-made CreateFleet) skips the fleet's bookkeeping instead of
   failing, as EC2 terminates any instance.
7. DescribeSpotInstanceRequests accepts the `status-code` filter (moto 5.2.5
   answers a 500, FilterNotImplementedError), which the operator's spot
   interruption check sends every few seconds while it holds spot machines.
"""

import sys
import threading

from moto.core.responses import ActionResult
from moto.ec2.exceptions import InvalidParameterCombination
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.instances import Instance, InstanceBackend
from moto.ec2.models.spot_requests import SpotInstanceRequest
from moto.ec2.responses import instances
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
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


def _own_tags(self):
    resource_id = getattr(self, "id", None)
    if not resource_id:
        return []
    own = self.ec2_backend.tags.get(resource_id, {})
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in own.items()
    ]


TaggedEC2Resource.get_tags = _own_tags



def _describe_instances_paged_by_instance(self):
    self.error_on_dryrun()
    if "InstanceId.1" in self.data and "MaxResults" in self.data:
        raise InvalidParameterCombination(
            "The parameter instancesSet cannot be used with the parameter maxResults"
        )
    filter_dict = self._filters_from_querystring()
    instance_ids = self._get_param("InstanceIds", [])
    if instance_ids:
        reservations = self.ec2_backend.get_reservations_by_instance_ids(
            instance_ids, filters=filter_dict
        )
    else:
        reservations = self.ec2_backend.describe_instances(filters=filter_dict)
    token = self._get_param("NextToken")
    start = 0
    if token:
        start = [r.id for r in reservations].index(token) + 1
    max_results = int(self._get_param("MaxResults", 1000))
    page, instances = [], 0
    for reservation in reservations[start:]:
        if page and instances >= max_results:
            break
        page.append(reservation)
        instances += len(reservation.instances)
    next_token = page[-1].id if page and start + len(page) < len(reservations) else None
    return ActionResult({"Reservations": page, "NextToken": next_token})


instances.InstanceResponse.describe_instances = _describe_instances_paged_by_instance


_describe_volumes = EBSBackend.describe_volumes


def _describe_volumes_by_id(self, volume_ids=None, filters=None):
    # The call RunInstances makes: one known id, no filters.
    if volume_ids and len(volume_ids) == 1 and not filters and volume_ids[0] in self.volumes:
        return [self.volumes[volume_ids[0]]]
    return _describe_volumes(self, volume_ids=volume_ids, filters=filters)


EBSBackend.describe_volumes = _describe_volumes_by_id


_get_instance = InstanceBackend.get_instance


def _get_instance_indexed(self, instance_id):
    index = self.__dict__.setdefault("_hostforge_instances", {})
    indexed = self.__dict__.setdefault("_hostforge_reservations", {})
    instance = index.get(instance_id)
    if instance is None:
        # Reservations are added at the end and fill up while their launch
        # runs: index what is new, newest first, up to a complete one.
        for reservation in reversed(list(self.reservations.values())):
            done = indexed.get(reservation.id, 0)
            if done and done == len(reservation.instances):
                break
            for candidate in reservation.instances[done:]:
                index.setdefault(candidate.id, candidate)
            indexed[reservation.id] = len(reservation.instances)
        instance = index.get(instance_id)
    if instance is None:
        return _get_instance(self, instance_id)
    return instance


InstanceBackend.get_instance = _get_instance_indexed


_dispatch = DomainDispatcherApplication.__call__
_one_at_a_time = threading.Lock()


def _is_sqs(environ):
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    scope = environ.get("HTTP_AUTHORIZATION", "")
    return target.startswith("AmazonSQS.") or "/sqs/aws4_request" in scope


def _dispatch_serialized(self, environ, start_response):
    # SQS calls skip the lock: a long-polling ReceiveMessage waits up to 20 s
    # inside moto, and holding the lock that long would stall every EC2 call
    # behind it (on AWS the two services never wait on each other). SQS's
    # models are a queue's message list, which moto's own threaded server
    # shares between request threads anyway.
    if _is_sqs(environ):
        return _dispatch(self, environ, start_response)
    # moto renders the whole body inside the call; iterating it needs no lock.
    with _one_at_a_time:
        return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _dispatch_serialized


_terminate = Instance.terminate


def _terminate_without_a_known_fleet(self):
    fleet_known = bool(
        self.ec2_backend.get_spot_fleet_request(self._spot_fleet_id)
        or self.ec2_backend.get_fleet(self._spot_fleet_id)
        or self.ec2_backend.get_fleet(self._fleet_id)
    )
    if (self._spot_fleet_id or self._fleet_id) and not fleet_known:
        self._spot_fleet_id = None
        self._fleet_id = None
    return _terminate(self)


Instance.terminate = _terminate_without_a_known_fleet


_spot_filter_value = SpotInstanceRequest.get_filter_value


def _spot_filter_value_with_status_code(self, filter_name, method_name=None):
    if filter_name == "status-code":
        return self._status_code
    return _spot_filter_value(self, filter_name, method_name)


SpotInstanceRequest.get_filter_value = _spot_filter_value_with_status_code


if __name__ == "__main__":
    main(sys.argv[1:])

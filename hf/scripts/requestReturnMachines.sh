#!/bin/sh
# HostFactory / LSF resource connector entry point: requestReturnMachines.sh -f input.json
# Execs the hostforge binary (HOSTFORGE_BIN, else hostforge on PATH), which answers
# from the Kubernetes objects. See docs/hostfactory.md.
exec "${HOSTFORGE_BIN:-hostforge}" hf requestReturnMachines "$@"

"""The owncr policy pack entry point, run by the Pulumi engine (`pulumi preview --policy-pack policy`).

Thin on purpose: constructing `PolicyPack` starts the analyzer's gRPC server and blocks, so nothing may
import this module; the policies live in `policies.py` where tests call them directly.
"""

from policies import POLICIES
from pulumi_policy import PolicyPack

PolicyPack(name="owncr", policies=POLICIES)

"""Scale-out: the device mesh, logical axis rules, sharded initialisation and steps, multi-host start."""

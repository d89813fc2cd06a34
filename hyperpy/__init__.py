"""hyperpy: a hypervisor-isolated OCI container runtime with runc's command line."""

__version__ = "0.1.0"

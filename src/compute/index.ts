/**
 * Layer 6 — hypervisor drivers (QEMU: launch, QMP), hosts, VMs, networks (issue 5).
 * Nothing is built here yet; the folder holds the place the design gives it (docs/architecture.md).
 */
export {};

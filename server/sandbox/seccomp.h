// The seccomp filter of ChildOptions::seccomp: a deny-list (everything not
// named is allowed, because LibTorch, OpenBLAS, OpenMP and CUDA need a wide set
// of syscalls), as a classic BPF program built by hand (no libseccomp).
//
// Denied:
//  - a syscall of a foreign ABI (seccomp_data.arch not this binary's; on
//    x86_64 also the x32 ABI, __X32_SYSCALL_BIT): the process is killed
//    (SIGSYS), so the i386/x32 syscall tables cannot bypass the numbers below;
//  - socket() of any family but AF_UNIX: EPERM (no TCP/UDP/raw/netlink/packet;
//    socketpair stays);
//  - namespaces: unshare, setns, clone with a CLONE_NEW* flag: EPERM; clone3,
//    whose flags sit in memory a filter cannot read: ENOSYS (glibc then falls
//    back to clone, as it does under Docker's default profile);
//  - other processes: ptrace, process_vm_readv, process_vm_writev: EPERM;
//  - kernel attack surface and system state: mount, umount2, the new mount
//    API (open_tree, move_mount, fsopen, fsconfig, fsmount, fspick,
//    mount_setattr), pivot_root, chroot, init/finit/delete_module,
//    kexec_load, kexec_file_load, bpf, perf_event_open, keyctl, add_key,
//    request_key, reboot, swapon, swapoff, acct, settimeofday, clock_settime,
//    clock_adjtime, adjtimex, userfaultfd, io_uring_setup,
//    open_by_handle_at: EPERM.
// Syscalls an architecture does not have are left out there (#ifdef __NR_x).
#ifndef COMPRESS_SANDBOX_SECCOMP_H_
#define COMPRESS_SANDBOX_SECCOMP_H_

#include <linux/filter.h>

#include <vector>

#include "absl/status/statusor.h"

namespace compress::sandbox {

// The program for the architecture this binary was built for (x86_64 or
// little-endian aarch64); FAILED_PRECONDITION on any other, so that asking for
// the filter never silently runs a child without it. Allocates: call it
// before fork.
absl::StatusOr<std::vector<sock_filter>> ChildSeccompProgram();

// Sets PR_SET_NO_NEW_PRIVS (required to install a filter without
// CAP_SYS_ADMIN, and it keeps setuid binaries from gaining privileges) and
// installs `program` on the calling thread; the filter is kept across execve
// and inherited by every child. Async-signal-safe (prctl only), for the
// forked child right before execve. Returns 0, or the errno of the call that
// failed.
int InstallSeccompProgram(const sock_fprog& program);

}  // namespace compress::sandbox

#endif  // COMPRESS_SANDBOX_SECCOMP_H_

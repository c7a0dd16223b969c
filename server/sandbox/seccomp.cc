#include "server/sandbox/seccomp.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <cstdint>

#include "absl/status/status.h"

// The audit architecture of the syscalls this binary makes. x32 builds
// (__ILP32__) report AUDIT_ARCH_X86_64 too but with __X32_SYSCALL_BIT in
// every number, which this filter kills; big-endian aarch64 has another arch
// value and puts the low word of an argument elsewhere. Neither is supported.
#if defined(__x86_64__) && !defined(__ILP32__)
#define COMPRESS_SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__) && !defined(__AARCH64EB__)
#define COMPRESS_SECCOMP_ARCH AUDIT_ARCH_AARCH64
#endif

namespace compress::sandbox {

#ifdef COMPRESS_SECCOMP_ARCH
namespace {

constexpr uint32_t kArchOffset = offsetof(struct seccomp_data, arch);
constexpr uint32_t kNrOffset = offsetof(struct seccomp_data, nr);
// The low 32 bits of args[0] (both supported architectures are little-endian).
// socket's domain and clone's flags are read by the kernel as 32-bit values
// (an int; lower_32_bits(clone_flags)), so the high word cannot hide anything.
constexpr uint32_t kArg0LowOffset = offsetof(struct seccomp_data, args[0]);

// clone() flags that create namespaces. CLONE_NEWTIME (0x80) is left out: in
// clone() that bit is part of the exit signal, and only clone3 and unshare,
// both denied whole, accept it.
constexpr uint32_t kCloneNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
                                          CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
                                          CLONE_NEWNET;

constexpr sock_filter Stmt(uint16_t code, uint32_t k) { return {code, 0, 0, k}; }
constexpr sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) {
  return {code, jt, jf, k};
}

// Denied with EPERM whatever their arguments.
constexpr int kDenied[] = {
    // Other processes' memory and control.
    __NR_ptrace, __NR_process_vm_readv, __NR_process_vm_writev,
    // Namespaces (clone's flags are checked apart) and the file system tree.
    __NR_unshare, __NR_setns, __NR_mount, __NR_umount2, __NR_pivot_root, __NR_chroot,
#ifdef __NR_open_tree
    __NR_open_tree, __NR_move_mount, __NR_fsopen, __NR_fsconfig, __NR_fsmount, __NR_fspick,
#endif
#ifdef __NR_mount_setattr
    __NR_mount_setattr,
#endif
    // Opens any file by handle, past the directories' permissions.
    __NR_open_by_handle_at,
    // Kernel modules, new kernels, kernel programs and other large kernel
    // attack surface an exploited loader has no use for.
    __NR_init_module, __NR_finit_module, __NR_delete_module, __NR_kexec_load,
#ifdef __NR_kexec_file_load
    __NR_kexec_file_load,
#endif
    __NR_bpf, __NR_perf_event_open, __NR_keyctl, __NR_add_key, __NR_request_key,
    __NR_userfaultfd,
#ifdef __NR_io_uring_setup
    __NR_io_uring_setup,
#endif
    // System state: power, swap, process accounting, the clock.
    __NR_reboot, __NR_swapon, __NR_swapoff, __NR_acct, __NR_settimeofday, __NR_clock_settime,
    __NR_clock_adjtime, __NR_adjtimex,
};

}  // namespace

absl::StatusOr<std::vector<sock_filter>> ChildSeccompProgram() {
  std::vector<sock_filter> p;
  // A syscall of another ABI has other numbers: kill before reading nr.
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kArchOffset));
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, COMPRESS_SECCOMP_ARCH, 1, 0));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kNrOffset));
#ifdef __x86_64__
  // The x32 ABI (same arch value, nr | __X32_SYSCALL_BIT). nr -1 is not a
  // syscall (it returns ENOSYS; tracers use it to skip one) and passes, as
  // under libseccomp.
  p.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 2));
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffffu, 1, 0));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
  // The deny-list: each match jumps to the RET EPERM at the end (patched below).
  std::vector<size_t> to_eperm;
  for (int nr : kDenied) {
    to_eperm.push_back(p.size());
    p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, 0));
  }
  // socket(domain, ...): AF_UNIX only. Both branches return.
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 4));
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kArg0LowOffset));
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  // clone(flags, ...): no new namespaces. Both branches return.
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4));
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kArg0LowOffset));
  p.push_back(Jump(BPF_JMP | BPF_JSET | BPF_K, kCloneNamespaceFlags, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#ifdef __NR_clone3
  // clone3's flags are behind a pointer: ENOSYS makes glibc use clone.
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
#endif
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  const size_t eperm = p.size();
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)));
  for (size_t at : to_eperm) {
    const size_t distance = eperm - at - 1;
    if (distance > 255) return absl::InternalError("seccomp deny-list too long for a BPF jump");
    p[at].jt = static_cast<uint8_t>(distance);
  }
  if (p.size() > BPF_MAXINSNS) return absl::InternalError("seccomp program too long");
  return p;
}

#else  // no COMPRESS_SECCOMP_ARCH

absl::StatusOr<std::vector<sock_filter>> ChildSeccompProgram() {
  return absl::FailedPreconditionError(
      "the child seccomp filter is only built for x86_64 and aarch64; this binary is for "
      "another architecture: run without it");
}

#endif  // COMPRESS_SECCOMP_ARCH

int InstallSeccompProgram(const sock_fprog& program) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return errno;
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) return errno;
  return 0;
}

}  // namespace compress::sandbox

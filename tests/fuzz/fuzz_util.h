// Helpers shared by the libFuzzer targets in tests/fuzz (scripts/fuzz.sh).
//
// Readers that take a path are fed through a MemFile: an in-memory file
// (memfd) whose contents each run replaces, opened by its /proc/self/fd
// path, so a run costs no disk I/O.
//
//   static MemFile* file = new MemFile();
//   ReadIdxFile(file->Write(data, size));
//
// A fuzzer is one process running one input at a time: nothing here is
// thread-safe.
#ifndef COMPRESS_TESTS_FUZZ_FUZZ_UTIL_H_
#define COMPRESS_TESTS_FUZZ_FUZZ_UTIL_H_

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/status/status.h"

namespace compress::fuzz {

class MemFile {
 public:
  MemFile() : fd_(memfd_create("fuzz-input", 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the contents with `size` bytes; returns the path to open.
  const std::string& Write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size)) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

// A new directory under $TMPDIR (default /tmp), removed when the process
// exits normally. Call it once per process.
inline std::string NewTempDir(const char* prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/" +
                        prefix + "-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  static std::string* to_remove = new std::string(pattern);
  *to_remove = pattern;
  std::atexit([] {
    std::error_code ignored;
    std::filesystem::remove_all(*to_remove, ignored);
  });
  return pattern;
}

// With FUZZ_VERBOSE set in the environment, prints what a step answered:
// to check how far a seed gets (FUZZ_VERBOSE=1 build-fuzz/tests/fuzz/T SEED).
inline void Explain(const char* step, const absl::Status& status) {
  static const bool verbose = std::getenv("FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", step, status.ToString().c_str());
}

// Fails the run (libFuzzer keeps the input) when an invariant is broken.
#define FUZZ_CHECK(cond)                                                         \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                       \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

}  // namespace compress::fuzz

#endif  // COMPRESS_TESTS_FUZZ_FUZZ_UTIL_H_

// SPDX-License-Identifier: MIT
// LD_PRELOAD shim for crash-consistency tests (scripts/crash/crash_resume.py): kills the process
// with SIGKILL in the middle of an atomic file write, where a real crash would hurt most.
// "Temporary file" means a path containing ".tmp." (core/file_io.hpp's write_file_atomically
// writes "<path>.tmp.XXXXXX", then renames it over <path>).
//
//   DISTILL_CRASH_WRITE=k    on the k-th write() to a temporary file: write half of the bytes,
//                            then SIGKILL (a torn temporary file is left behind)
//   DISTILL_CRASH_RENAME=k   on the k-th rename() of a temporary file: SIGKILL before renaming
//                            (a complete temporary file, the previous file still in place)
//   DISTILL_CRASH_COUNT=path at exit, append "writes=<n> renames=<n>" to path (to size a schedule)
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

std::atomic<long> temp_writes{0}, temp_renames{0};

long env_count(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atol(v) : 0;
}

bool is_temporary(const char* path) { return path && std::strstr(path, ".tmp.") != nullptr; }

bool fd_is_temporary(int fd) {
  char link[64], target[4096];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return is_temporary(target);
}

template <class F>
F next(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

struct report_at_exit {
  ~report_at_exit() {
    const char* path = std::getenv("DISTILL_CRASH_COUNT");
    if (!path) return;
    if (std::FILE* f = std::fopen(path, "a")) {
      std::fprintf(f, "writes=%ld renames=%ld\n", temp_writes.load(), temp_renames.load());
      std::fclose(f);
    }
  }
} reporter;

}  // namespace

extern "C" ssize_t write(int fd, const void* buf, size_t n) {
  static const auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  static const long kill_at = env_count("DISTILL_CRASH_WRITE");
  if (fd > 2 && fd_is_temporary(fd)) {
    const long k = ++temp_writes;
    if (k == kill_at) {
      if (n > 1) (void)real(fd, buf, n / 2);
      ::kill(::getpid(), SIGKILL);
    }
  }
  return real(fd, buf, n);
}

extern "C" int rename(const char* from, const char* to) {
  static const auto real = next<int (*)(const char*, const char*)>("rename");
  static const long kill_at = env_count("DISTILL_CRASH_RENAME");
  if (is_temporary(from) && ++temp_renames == kill_at) ::kill(::getpid(), SIGKILL);
  return real(from, to);
}

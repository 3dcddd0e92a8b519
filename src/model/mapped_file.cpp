#include "model/mapped_file.h"

#include "common/regular_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cerrno>
#include <mutex>
#include <cstring>
#include <stdexcept>

namespace cpuchat {

namespace {

// A mapped file truncated under us turns the next read of the lost pages into SIGBUS. That
// cannot be recovered (the weights are gone), but it must not look like a random crash:
// say what happened, then die of the same signal.
void on_sigbus(int, siginfo_t*, void*) {
  static const char msg[] =
      "cpuchat: fatal: SIGBUS reading a memory-mapped model file: it was truncated or replaced while in use "
      "(model files must not change under a running process; see README, operations notes)\n";
  ssize_t ignored = write(2, msg, sizeof msg - 1);
  (void)ignored;
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

void install_sigbus_message() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, nullptr);
  });
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  install_sigbus_message();
  const int fd = open_regular_file(path);  // a FIFO or device is refused here, never waited on
  struct stat st {};
  fstat(fd, &st);
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw std::runtime_error(path + ": cannot map: " + strerror(err));
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_) munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::release(const void* begin, size_t bytes) const {
  // madvise works on whole pages: shrink the range inward to page boundaries so
  // bytes of neighbouring tensors are never dropped (they would just be re-read anyway).
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t lo = reinterpret_cast<uintptr_t>(begin);
  uintptr_t hi = lo + bytes;
  lo = (lo + page - 1) & ~(page - 1);
  hi &= ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace cpuchat

// Runs a command (argv, no shell) and captures its exit code, stdout and stderr, for
// tests that drive the real cpuchat binary the way users and benchmarks do.
#pragma once
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace cpuchat::test {

struct ProcessResult {
  int exit_code = -1;
  std::string out, err;
  // getrusage ru_maxrss of the child: on Linux it starts from the PARENT's resident size at fork,
  // so it cannot bound a child smaller than its parent (use the child's own VmHWM for that).
  long max_rss_kb = 0;
};

// Cross builds (CMAKE_CROSSCOMPILING_EMULATOR, e.g. "qemu-aarch64|-L|<sysroot>") start the
// binaries they built through the emulator; host tools (python3, node, ...) run as they are.
inline std::vector<std::string> with_emulator(std::vector<std::string> argv) {
#if defined(CPUCHAT_TEST_EMULATOR) && defined(CPUCHAT_BINARY)
  if (!argv.empty() && argv[0] == CPUCHAT_BINARY) {
    std::vector<std::string> emulator;
    std::string list = CPUCHAT_TEST_EMULATOR;
    for (size_t begin = 0, end; begin <= list.size(); begin = end + 1) {
      end = list.find('|', begin);
      if (end == std::string::npos) end = list.size();
      emulator.push_back(list.substr(begin, end - begin));
    }
    argv.insert(argv.begin(), emulator.begin(), emulator.end());
  }
#endif
  return argv;
}

inline ProcessResult run_process(const std::vector<std::string>& command, const std::string& stdin_text = "") {
  const std::vector<std::string> argv = with_emulator(command);
  int out_pipe[2], err_pipe[2], in_pipe[2];
  if (pipe(out_pipe) || pipe(err_pipe) || pipe(in_pipe)) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], in_pipe[0], in_pipe[1]}) close(fd);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());  // the emulator is found on PATH
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  close(in_pipe[0]);
  if (!stdin_text.empty()) {
    ssize_t ignored = write(in_pipe[1], stdin_text.data(), stdin_text.size());
    (void)ignored;
  }
  close(in_pipe[1]);
  ProcessResult r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, size_t(n));
      }
    }
  }
  int status = 0;
  rusage usage{};
  wait4(pid, &status, 0, &usage);
  r.max_rss_kb = usage.ru_maxrss;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace cpuchat::test

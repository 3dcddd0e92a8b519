// cpuchat: one binary, several subcommands.
#include <malloc.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/cfg/env.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cpuchat/server.h"

namespace {

const char* kUsage =
    "usage: cpuchat <command> [flags]\n"
    "  serve       OpenAI-compatible API + chat page (cpuchat serve --model PATH)\n"
    "  chat        interactive terminal chat\n"
    "  generate    generate text from --prompt or --ids\n"
    "  logits      full-vocab logit statistics for --ids (one forward pass)\n"
    "  tokenize    text -> ids;  detokenize: ids -> text\n"
    "  perplexity  perplexity of a text file\n"
    "  quant-eval  KL divergence / top-1 agreement of weight formats vs fp32\n"
    "  make-model  write a random-weight HF checkpoint of a known shape\n"
    "  bench       before/after benchmark (tokens/s, TTFT, roofline, cost)\n"
    "  bench-constrained  grammar-constrained vs free decoding, per-token cost\n"
    "run 'cpuchat <command> --help' for its flags\n";

}  // namespace

int main(int argc, char** argv) {
  // Every decoded token allocates and frees the same few MB of activations. glibc's default
  // (dynamic mmap threshold, 128 KB trim threshold) hands them back to the kernel and faults
  // them in again each token: measured ~6 % of 8B decode time in brk/munmap. Keep them;
  // loading still returns its scratch explicitly (malloc_trim after packing).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  // Logs go to stderr: stdout carries the commands' output (--json, tokens).
  spdlog::set_default_logger(spdlog::stderr_color_mt("cpuchat"));
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug|trace (trace: one line per forward step)
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  using Command = int (*)(int, char**);
  struct Entry { const char* name; Command run; };
  const Entry commands[] = {
      {"serve", cpuchat::serve_command},           {"chat", cpuchat::chat_command},
      {"generate", cpuchat::generate_command},     {"logits", cpuchat::logits_command},
      {"tokenize", cpuchat::tokenize_command},     {"detokenize", cpuchat::detokenize_command},
      {"perplexity", cpuchat::perplexity_command}, {"make-model", cpuchat::make_model_command},
      {"bench", cpuchat::bench_command},          {"quant-eval", cpuchat::quant_eval_command},
      {"bench-constrained", cpuchat::bench_constrained_command},
  };
  for (const Entry& e : commands) {
    if (cmd != e.name) continue;
    try {
      return e.run(argc - 1, argv + 1);
    } catch (const std::exception& ex) {
      fprintf(stderr, "cpuchat %s: error: %s\n", e.name, ex.what());
      return 1;
    }
  }
  fprintf(stderr, "cpuchat: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return 2;
}

// The cpuchat subcommands. Each parses its own flags (argv[0] is the subcommand name)
// and returns the process exit code; bad flags print a one-line error and return 2.
#pragma once

namespace cpuchat {

int generate_command(int argc, char** argv);
int logits_command(int argc, char** argv);
int tokenize_command(int argc, char** argv);
int detokenize_command(int argc, char** argv);
int chat_command(int argc, char** argv);
int make_model_command(int argc, char** argv);
int perplexity_command(int argc, char** argv);
int bench_command(int argc, char** argv);
int quant_eval_command(int argc, char** argv);  // src/cli/quant_eval.cpp
int bench_constrained_command(int argc, char** argv);  // bench_constrained.cpp

}  // namespace cpuchat

// The HTTP server: OpenAI-compatible API, Prometheus metrics and the embedded page.
#pragma once

namespace cpuchat {

// `cpuchat serve ...`: parses its own flags (argv[0] is "serve"), loads the engine(s),
// serves until SIGINT/SIGTERM. Returns the process exit code.
int serve_command(int argc, char** argv);

}  // namespace cpuchat

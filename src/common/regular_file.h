// Opening files named by users (model files, shards, tokenizers, configs) so that a FIFO,
// a device or a directory is refused at once instead of blocking forever or reading without end.
#pragma once
#include <cstddef>
#include <string>

namespace cpuchat {

// Opens `path` read-only if it is a regular file (symlinks are followed); returns the fd.
// Throws std::runtime_error("PATH: not a regular file (a FIFO)") and the like; never blocks.
int open_regular_file(const std::string& path);

// The whole contents of the regular file `path`, refusing files over `max_bytes`.
std::string read_regular_file(const std::string& path, size_t max_bytes);

// True when `path` names a regular file (after symlinks); no exception.
bool is_regular_file(const std::string& path);

}  // namespace cpuchat

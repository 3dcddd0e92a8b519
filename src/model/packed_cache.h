// --cache-packed: the int4-packed linear weights of a checkpoint, saved in one file next to
// it, so a restart maps them (seconds) instead of quantizing and repacking (tens of seconds).
//
// The file format is in packed_cache_format.h. Loading reads the blobs into anonymous memory
// (not a map: a cache truncated or rewritten under a running server cannot SIGBUS it) and
// checks each blob's XXH64, in parallel. The fingerprint names the source files by size and
// by a hash of their headers plus sampled data (not mtime, which copies and touches change),
// the quantization scheme and the kernels' layout; a cache whose fingerprint differs, or that
// fails any check, is ignored and rewritten.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cpuchat/engine.h"
#include "model/checkpoint.h"

namespace cpuchat {

class PackedCache {
 public:
  // Where the cache of `model_path` lives: DIR/cpuchat-int4-<quant>-<layout>.cache for a
  // directory, FILE.cpuchat-int4-<quant>-<layout>.cache for a single-file checkpoint.
  static std::string path_for(const std::string& model_path, QuantScheme quant);
  static std::string fingerprint(const Checkpoint& ck, QuantScheme quant);

  // Loads the cache at `path` if it exists, matches `fingerprint` and passes its checksums
  // (`threads` read and verify in parallel); otherwise returns an
  // empty cache that records what the model packs, for save(). `why_not` says why an existing
  // file was not used ("" when it was used or did not exist).
  static PackedCache open(const std::string& path, const std::string& fingerprint, std::string* why_not);

  bool loaded() const { return memory_.defined(); }
  // The packed tensor saved under `name` (a view into the loaded memory), or undefined if absent.
  torch::Tensor find(const std::string& name) const;
  // Remembers a packed tensor to write (no copy: the model keeps it alive).
  void record(const std::string& name, torch::Tensor packed);
  // Writes the recorded tensors to path() (a temporary file renamed into place, so a crash
  // never leaves a half-written cache). Returns bytes written; throws std::runtime_error.
  uint64_t save() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_, fingerprint_;
  torch::Tensor memory_;                                   // the loaded blobs (anonymous memory)
  std::map<std::string, torch::Tensor> tensors_;           // loaded: views into memory_
  std::vector<std::pair<std::string, torch::Tensor>> recorded_;
};

}  // namespace cpuchat

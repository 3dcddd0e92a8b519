#include "model/packed_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>

#include <chrono>

#include "common/regular_file.h"
#include "common/xxhash64.h"
#include "cpuchat_kernels/int4_matmul.h"
#include "model/anonymous_memory.h"
#include "model/model.h"
#include "model/packed_cache_format.h"

namespace cpuchat {

namespace kn = cpuchat::kernels;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string active_layout_name() { return kn::layout_name(kn::layout_for_isa(kn::active_isa())); }

}  // namespace

std::string PackedCache::path_for(const std::string& model_path, QuantScheme quant) {
  const std::string name = "cpuchat-int4-" + quant_name(quant) + "-" + active_layout_name() + ".cache";
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) return (fs::path(model_path) / name).string();
  return model_path + "." + name;
}

namespace {

// Identifies a file by content without reading all of it: its size, its first 16 MiB (every
// format's header, GGUF's tokenizer included) and 64 evenly spaced 64 KiB samples plus the
// tail. ~20 MB read per file, so a different checkpoint of the same size is not mistaken
// for the one the cache was made from.
std::string content_sample_hash(const MappedFile& f) {
  constexpr uint64_t kHead = 16u << 20, kSample = 64u << 10, kSamples = 64;
  const uint64_t size = f.size();
  uint64_t h = xxhash64(f.data(), std::min(size, kHead));
  if (size > kHead) {
    for (uint64_t i = 0; i <= kSamples; ++i) {
      const uint64_t at = std::min(size - kSample, kHead + (size - kHead) / kSamples * i);
      h = xxhash64(f.data() + at, kSample, h);
    }
  }
  f.release(f.data(), size);  // sampling only: let these pages go
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

// pread until `bytes` are in or the file ends; false on an error or a short file.
bool read_fully(int fd, void* dst, uint64_t bytes, uint64_t offset) {
  auto* p = static_cast<uint8_t*>(dst);
  while (bytes > 0) {
    const ssize_t n = pread(fd, p, std::min<uint64_t>(bytes, 1u << 30), off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= uint64_t(n);
    offset += uint64_t(n);
  }
  return true;
}

}  // namespace

std::string PackedCache::fingerprint(const Checkpoint& ck, QuantScheme quant) {
  json j = {{"quant", quant_name(quant)},
            {"layout", active_layout_name()},
            {"kernels_packed_version", kn::PackedHeader::kVersion},
            {"quantizer", int4_quantizer_revision()},
            {"files", json::array()}};
  for (const auto& f : ck.files)
    j["files"].push_back({fs::path(f->path()).filename().string(), f->size(), content_sample_hash(*f)});
  return j.dump();
}

PackedCache PackedCache::open(const std::string& path, const std::string& fingerprint, std::string* why_not) {
  PackedCache cache;
  cache.path_ = path;
  cache.fingerprint_ = fingerprint;
  if (why_not) why_not->clear();
  std::error_code ec;
  if (!fs::exists(path, ec)) return cache;
  auto reject = [&](const std::string& why) {
    if (why_not) *why_not = path + ": " + why;
    PackedCache empty;
    empty.path_ = path;
    empty.fingerprint_ = fingerprint;
    return empty;
  };
  int fd = -1;
  try {
    fd = open_regular_file(path);
  } catch (const std::exception& e) {
    return reject(e.what());
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  fstat(fd, &st);
  const uint64_t file_size = uint64_t(st.st_size);
  PackedCacheHeader h{};
  PackedCacheIndex index;
  try {
    char head[sizeof(PackedCacheHeader)] = {};
    const bool got_head = read_fully(fd, head, sizeof head, 0);
    h = parse_packed_cache_header(head, got_head ? sizeof head : 0, file_size);
    std::string text(h.index_bytes, '\0');
    if (!read_fully(fd, text.data(), text.size(), h.index_offset)) return reject("cannot read the index");
    index = parse_packed_cache_index(text.data(), text.size(), h);
  } catch (const std::exception& e) {
    return reject(e.what());
  }
  if (index.fingerprint != fingerprint) return reject("made from other files or settings");

  // Read every blob into anonymous memory and check it, the blobs spread over the threads.
  torch::Tensor memory;
  try {
    memory = anonymous_bytes(int64_t(h.index_offset));
  } catch (const std::bad_alloc&) {
    return reject(std::string("cannot allocate memory: ") + std::strerror(errno));
  }
  auto* base = memory.data_ptr<uint8_t>();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, PackedCacheBlob>> blobs(index.blobs.begin(), index.blobs.end());
  std::vector<std::string> problems(blobs.size());
  at::parallel_for(0, int64_t(blobs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto& [name, b] = blobs[size_t(i)];
      // In pieces that are hashed while they are still in cache: hashing then costs little
      // next to the read, instead of a second pass over the blob from memory.
      constexpr uint64_t kPiece = 1 << 20;
      Xxhash64Stream hash;
      bool complete = true;
      for (uint64_t at = 0; at < b.bytes && complete; at += kPiece) {
        const uint64_t n = std::min(kPiece, b.bytes - at);
        complete = read_fully(fd, base + b.offset + at, n, b.offset + at);
        if (complete) hash.update(base + b.offset + at, n);
      }
      if (!complete) problems[size_t(i)] = "tensor " + name + " truncated";
      else if (hash.digest() != b.checksum) problems[size_t(i)] = "tensor " + name + " fails its checksum (corrupted)";
    }
  });
  for (const auto& problem : problems)
    if (!problem.empty()) return reject(problem);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("packed cache: read and checksummed {:.3f} GB in {:.3f} s ({:.2f} GB/s)", h.index_offset / 1e9, seconds,
               h.index_offset / 1e9 / std::max(seconds, 1e-9));
  try {
    for (const auto& [name, b] : blobs) {
      kn::PackedHeader ph;
      std::memcpy(&ph, base + b.offset, sizeof ph);
      kn::PackedWeights::view(ph, base + b.offset + 64);  // validates the header
      if (ph.byte_size + 64 > b.bytes) return reject("tensor " + name + " truncated");
      // Each view holds the memory: it lives as long as any tensor using it.
      cache.tensors_[name] = memory.narrow(0, int64_t(b.offset), int64_t(b.bytes));
    }
  } catch (const std::exception& e) {
    return reject(std::string("bad blob: ") + e.what());
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // we hold a copy; the page cache need not
  cache.memory_ = memory;
  return cache;
}

torch::Tensor PackedCache::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? torch::Tensor() : it->second;
}

void PackedCache::record(const std::string& name, torch::Tensor packed) { recorded_.emplace_back(name, std::move(packed)); }

uint64_t PackedCache::save() const {
  const std::string tmp = path_ + ".tmp" + std::to_string(getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(tmp + ": cannot create: " + std::strerror(errno));
  bool ok = true;
  uint64_t pos = 0;
  auto write = [&](const void* p, uint64_t n) {
    ok = ok && std::fwrite(p, 1, n, f) == n;
    pos += n;
  };
  auto pad_to = [&](uint64_t align) {
    static const char zeros[kPackedBlobAlign] = {};
    if (pos % align) write(zeros, align - pos % align);
  };
  PackedCacheHeader h{};
  std::memcpy(h.magic, PackedCacheHeader::kMagic, sizeof h.magic);
  h.version = PackedCacheHeader::kVersion;
  write(&h, sizeof h);
  json index = {{"fingerprint", fingerprint_}, {"tensors", json::object()}};
  for (const auto& [name, t] : recorded_) {
    pad_to(kPackedBlobAlign);
    index["tensors"][name] = {pos, uint64_t(t.numel()), xxhash64(t.data_ptr<uint8_t>(), uint64_t(t.numel()))};
    write(t.data_ptr<uint8_t>(), uint64_t(t.numel()));
  }
  const std::string text = index.dump();
  h.index_offset = pos;
  h.index_bytes = text.size();
  write(text.data(), text.size());
  ok = ok && std::fseek(f, 0, SEEK_SET) == 0 && std::fwrite(&h, sizeof h, 1, f) == 1;
  ok = std::fclose(f) == 0 && ok;
  std::error_code ec;
  if (ok) fs::rename(tmp, path_, ec);
  if (!ok || ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error(path_ + ": cannot write the packed cache (disk full or read-only?)");
  }
  return pos;
}

}  // namespace cpuchat

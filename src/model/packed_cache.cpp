#include "model/packed_cache.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cpuchat_kernels/int4_matmul.h"

namespace cpuchat {

namespace kn = cpuchat::kernels;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr char kMagic[8] = {'C', 'P', 'U', 'C', 'H', 'A', 'T', 'P'};
constexpr uint32_t kFormatVersion = 1;
// Blobs need 64-byte alignment (PackedWeights::view); 4096 also keeps them on their own pages
// on 4 KiB-page kernels. On 64 KiB-page aarch64 kernels (some Graviton distributions) the whole
// file is still one mapping, so nothing depends on the page size here (file format unchanged).
constexpr uint64_t kBlobAlign = 4096;

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t index_offset;
  uint64_t index_bytes;
};
static_assert(sizeof(FileHeader) == 32, "written raw");

std::string active_layout_name() { return kn::layout_name(kn::layout_for_isa(kn::active_isa())); }

}  // namespace

std::string PackedCache::path_for(const std::string& model_path, QuantScheme quant) {
  const std::string name = "cpuchat-int4-" + quant_name(quant) + "-" + active_layout_name() + ".cache";
  std::error_code ec;
  if (fs::is_directory(model_path, ec)) return (fs::path(model_path) / name).string();
  return model_path + "." + name;
}

std::string PackedCache::fingerprint(const Checkpoint& ck, QuantScheme quant) {
  json j = {{"quant", quant_name(quant)},
            {"layout", active_layout_name()},
            {"kernels_packed_version", kn::PackedHeader::kVersion},
            {"files", json::array()}};
  for (const auto& f : ck.files) {
    struct stat st {};
    const bool ok = stat(f->path().c_str(), &st) == 0;
    j["files"].push_back({fs::path(f->path()).filename().string(), ok ? int64_t(st.st_size) : -1,
                          ok ? int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec : -1});
  }
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
  std::shared_ptr<MappedFile> file;
  try {
    file = MappedFile::open(path);
  } catch (const std::exception& e) {
    return reject(e.what());
  }
  FileHeader h{};
  if (file->size() < sizeof h) return reject("truncated header");
  std::memcpy(&h, file->data(), sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) return reject("not a cpuchat packed cache");
  if (h.version != kFormatVersion) return reject("format version " + std::to_string(h.version));
  if (h.index_offset > file->size() || h.index_bytes > file->size() - h.index_offset) return reject("index past the end");
  json index;
  try {
    index = json::parse(file->data() + h.index_offset, file->data() + h.index_offset + h.index_bytes);
    if (index.at("fingerprint").get<std::string>() != fingerprint) return reject("made from other files or settings");
    for (const auto& [name, where] : index.at("tensors").items()) {
      const uint64_t offset = where.at(0), bytes = where.at(1);
      if (offset % kBlobAlign != 0 || offset > h.index_offset || bytes > h.index_offset - offset || bytes <= 64)
        return reject("tensor " + name + " out of bounds");
      kn::PackedHeader ph;
      std::memcpy(&ph, file->data() + offset, sizeof ph);
      kn::PackedWeights::view(ph, file->data() + offset + 64);  // validates the header
      if (ph.byte_size + 64 > bytes) return reject("tensor " + name + " truncated");
      // The map is read-only and outlives every view: each tensor holds the file.
      cache.tensors_[name] = torch::from_blob(
          const_cast<uint8_t*>(file->data() + offset), {int64_t(bytes)}, [file](void*) {}, torch::kUInt8);
    }
  } catch (const std::exception& e) {
    return reject(std::string("bad index: ") + e.what());
  }
  // Start reading the whole file in now, so the first answer does not wait on page faults.
  madvise(const_cast<uint8_t*>(file->data()), file->size(), MADV_WILLNEED);
  cache.file_ = std::move(file);
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
    static const char zeros[kBlobAlign] = {};
    if (pos % align) write(zeros, align - pos % align);
  };
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kFormatVersion;
  write(&h, sizeof h);
  json index = {{"fingerprint", fingerprint_}, {"tensors", json::object()}};
  for (const auto& [name, t] : recorded_) {
    pad_to(kBlobAlign);
    index["tensors"][name] = {pos, uint64_t(t.numel())};
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

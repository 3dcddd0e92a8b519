// A read-only memory map of a checkpoint file: tensors are views into it, so a
// multi-GiB model is never copied just to be loaded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cpuchat {

class MappedFile {
 public:
  // Throws std::runtime_error("PATH: ...") if the file cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Tells the kernel we are done with these bytes, so their pages leave our RSS
  // (used after a tensor has been converted or repacked).
  void release(const void* begin, size_t bytes) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cpuchat

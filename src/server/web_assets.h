// The page's files, compiled into the binary by scripts/embed_web.cmake.
#pragma once
#include <cstddef>

namespace cpuchat {

struct WebAsset {
  const char* path;            // "/index.html"
  const unsigned char* data;
  std::size_t size;
};

const WebAsset* web_assets(std::size_t* count);

}  // namespace cpuchat

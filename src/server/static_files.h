// The embedded page (web_assets.h): `/` is index.html, `/<file>` an embedded file, and
// nothing else -- paths are looked up exactly in the table, so no traversal is possible.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "server/web_assets.h"

namespace cpuchat::server {

struct StaticFile {
  std::string path;          // "/index.html"
  const unsigned char* data;
  size_t size;
  std::string content_type;
  std::string etag;          // strong validator of the content: "\"<hash>\""
};

class StaticFiles {
 public:
  StaticFiles(const WebAsset* assets, size_t count);
  // The file for a request path ("/" -> "/index.html"), or nullptr.
  const StaticFile* find(const std::string& request_path) const;
  static std::string content_type_for(const std::string& path);

 private:
  std::vector<StaticFile> files_;
};

// True if an If-None-Match header value lists `etag` (or is "*").
bool etag_matches(const std::string& if_none_match, const std::string& etag);

}  // namespace cpuchat::server

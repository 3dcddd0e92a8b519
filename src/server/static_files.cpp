#include "server/static_files.h"

#include <cstdint>
#include <cstdio>

namespace cpuchat::server {

namespace {

uint64_t fnv1a64(const unsigned char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

bool ends_with(const std::string& s, const char* suffix) {
  std::string x(suffix);
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

}  // namespace

std::string StaticFiles::content_type_for(const std::string& path) {
  struct Type { const char* ext; const char* mime; };
  static const Type types[] = {
      {".html", "text/html; charset=utf-8"},       {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},  {".css", "text/css; charset=utf-8"},
      {".svg", "image/svg+xml"},                   {".json", "application/json"},
      {".png", "image/png"},                       {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},       {".webmanifest", "application/manifest+json"},
  };
  for (const Type& t : types)
    if (ends_with(path, t.ext)) return t.mime;
  return "application/octet-stream";
}

StaticFiles::StaticFiles(const WebAsset* assets, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    char etag[40];
    snprintf(etag, sizeof etag, "\"%016llx\"",
             static_cast<unsigned long long>(fnv1a64(assets[i].data, assets[i].size)));
    files_.push_back({assets[i].path, assets[i].data, assets[i].size,
                      content_type_for(assets[i].path), etag});
  }
}

const StaticFile* StaticFiles::find(const std::string& request_path) const {
  const std::string path = request_path == "/" ? "/index.html" : request_path;
  for (const StaticFile& f : files_)
    if (f.path == path) return &f;
  return nullptr;
}

bool etag_matches(const std::string& if_none_match, const std::string& etag) {
  if (if_none_match.empty()) return false;
  if (if_none_match == "*") return true;
  // A comma-separated list; weak validators (W/"...") compare equal for GET.
  size_t pos = 0;
  while (pos < if_none_match.size()) {
    size_t comma = if_none_match.find(',', pos);
    std::string item = if_none_match.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) {
      item = item.substr(b, e - b + 1);
      if (item.rfind("W/", 0) == 0) item = item.substr(2);
      if (item == etag) return true;
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return false;
}

}  // namespace cpuchat::server

// `cpuchat bench`: the before/after evidence. For each backend × thread count it
// measures time to first token, prompt and decode speed (median of repeats after a
// warm-up), peak RSS and cost, next to the machine's own limit: memory read bandwidth
// measured in the same run, and the decode roofline it implies (bytes of weights read per
// token ÷ bandwidth). Writes JSON, a Markdown table and an SVG chart.
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "cpuchat/engine.h"
#include "server/pricing.h"

namespace cpuchat {

using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

// Streaming-read probe: every thread sums its slice of a buffer far larger than the
// caches, with plain 8-byte loads and with the widest vector loads the CPU has (which one
// streams faster differs between machines); the best pass is the machine's read bandwidth
// for that many threads. Runs before and after the measurements (see bench_body): this
// machine's bandwidth drifts by 10-20 % over a minute, and a low probe would inflate the
// roofline fraction.
using Wide = uint64_t __attribute__((vector_size(64)));
#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
uint64_t sum_wide(const uint64_t* p, size_t n) {
  const Wide* v = reinterpret_cast<const Wide*>(p);
  Wide a{}, b{}, c{}, d{};
  for (size_t i = 0; i + 4 <= n / 8; i += 4) a += v[i], b += v[i + 1], c += v[i + 2], d += v[i + 3];
  const Wide s = a + b + c + d;
  return s[0] + s[7];
}

uint64_t sum_scalar(const uint64_t* p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i + 4 <= n; i += 4) a += p[i], b += p[i + 1], c += p[i + 2], d += p[i + 3];
  return a + b + c + d;
}

double read_bandwidth_gbs(int threads, size_t bytes = size_t(1) << 30) {
  std::vector<uint64_t> buf(bytes / 8);  // 64-byte aligned by the allocator for this size
  for (size_t i = 0; i < buf.size(); i += 512) buf[i] = i;  // fault every page in
  const size_t per_thread = (buf.size() / threads) & ~size_t(31);
  double best = 0;
  std::vector<uint64_t> sums(threads * 8);
  Clock::time_point t0;
  // The same OpenMP pool the int4 matmuls run on, kept alive across passes: threads spawned
  // per pass start on their parent's core and read ~15 % low on 2 threads here.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const uint64_t* p = buf.data() + t * per_thread;
    for (int pass = 0; pass < 10; ++pass) {
#pragma omp barrier
#pragma omp master
      t0 = Clock::now();
#pragma omp barrier
      sums[t * 8] += pass % 2 ? sum_wide(p, per_thread) : sum_scalar(p, per_thread);
#pragma omp barrier
#pragma omp master
      {
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        best = std::max(best, double(per_thread) * omp_get_num_threads() * 8 / s / 1e9);
      }
    }
  }
  volatile uint64_t sink = sums[0];
  (void)sink;
  return best;
}

void reset_peak_rss() {
  // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each backend's peak is its own.
  int fd = open("/proc/self/clear_refs", O_WRONLY);
  if (fd >= 0) {
    ssize_t ignored = write(fd, "5", 1);
    (void)ignored;
    close(fd);
  }
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

json stats(const std::vector<double>& v) {
  return {{"median", median(v)}, {"min", *std::min_element(v.begin(), v.end())}, {"max", *std::max_element(v.begin(), v.end())}};
}

struct Progress {
  int done = 0, total = 0;
  Clock::time_point start = Clock::now();
  void step(const std::string& what) {
    ++done;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    fprintf(stderr, "\r[%3d/%3d %6.0fs] %-70s", done, total, s, what.substr(0, 70).c_str());
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
  }
};

// ---- outputs ---------------------------------------------------------------------------

std::string fmt(double v, int digits = 2) {
  char b[64];
  snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string markdown(const json& report) {
  const json& m = report["machine"];
  std::ostringstream o;
  o << "Machine: " << m["cpu"].get<std::string>() << ", " << m["cores"] << " cores, kernel ISA " << m["isa"].get<std::string>()
    << ", read bandwidth";
  const char* sep = " ";
  for (auto& [k, v] : m["read_bandwidth_gbs"].items()) {
    o << sep << fmt(v) << " GB/s (" << k << (k == "1" ? " thread)" : " threads)");
    sep = ", ";
  }
  o << ".\n\n| model | backend | threads | TTFT (s) | prompt tok/s | decode tok/s | roofline tok/s | % of roofline | "
       "weights/token (GB) | peak RSS (GB) | $ / 1M tokens | decode uplift |\n"
    << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const json& r : report["results"]) {
    o << "| " << r["model"].get<std::string>() << " | " << r["backend"].get<std::string>() << " | " << r["threads"] << " | "
      << fmt(r["ttft_s"], 3) << " | " << fmt(r["prompt_tokens_per_s"], 1) << " | " << fmt(r["decode_tokens_per_s"], 2) << " | "
      << fmt(r["roofline_tokens_per_s"], 2) << " | " << fmt(100 * r["roofline_fraction"].get<double>(), 0) << "% | "
      << fmt(r["weight_bytes_per_token"].get<double>() / 1e9, 3) << " | " << fmt(r["peak_rss_bytes"].get<double>() / 1e9, 2)
      << " | " << (r["cost_per_million_tokens_usd"].is_null() ? "-" : fmt(r["cost_per_million_tokens_usd"], 2)) << " | "
      << (r.contains("decode_uplift") ? fmt(r["decode_uplift"], 2) + "×" : "") << " |\n";
  }
  return o.str();
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else o += c;
  }
  return o;
}

// Two panels of grouped bars, one group per (model, threads), one bar per backend:
// decode tokens/s (higher is better) and time to first token (lower is better).
std::string svg_chart(const json& report) {
  std::vector<std::string> groups, backends;
  std::map<std::pair<std::string, std::string>, const json*> cell;
  for (const json& r : report["results"]) {
    const std::string g = r["model"].get<std::string>() + " · " + std::to_string(r["threads"].get<int>()) + "T";
    const std::string b = r["backend"];
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
    if (std::find(backends.begin(), backends.end(), b) == backends.end()) backends.push_back(b);
    cell[{g, b}] = &r;
  }
  const char* colors[] = {"#9aa5b1", "#2f80ed", "#27ae60", "#eb5757"};
  const int group_w = 40 + 34 * int(backends.size()), panel_h = 260, left = 60, top = 70;
  const int width = left + 20 + group_w * std::max<size_t>(1, groups.size()), height = top + 2 * (panel_h + 70) + 20;
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height << "' viewBox='0 0 " << width << " "
    << height << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='" << left << "' y='24' font-size='16' font-weight='bold'>cpuchat: libtorch baseline vs INT4 kernels</text>\n"
    << "<text x='" << left << "' y='44' fill='#555'>" << xml_escape(report["machine"]["cpu"].get<std::string>()) << " · "
    << xml_escape(report["machine"]["isa"].get<std::string>()) << "</text>\n";
  for (size_t b = 0; b < backends.size(); ++b)
    o << "<rect x='" << width - 100 << "' y='" << 14 + 16 * b << "' width='10' height='10' fill='" << colors[b % 4] << "'/><text x='"
      << width - 85 << "' y='" << 23 + 16 * b << "'>" << xml_escape(backends[b]) << "</text>\n";
  auto panel = [&](int y0, const char* key, const char* title, int digits) {
    double max = 0;
    for (auto& [k, r] : cell) max = std::max(max, (*r)[key].get<double>());
    if (max <= 0) max = 1;
    o << "<text x='" << left << "' y='" << y0 - 8 << "' font-weight='bold'>" << title << "</text>\n"
      << "<line x1='" << left << "' y1='" << y0 + panel_h << "' x2='" << width - 10 << "' y2='" << y0 + panel_h
      << "' stroke='#333'/>\n";
    for (size_t g = 0; g < groups.size(); ++g) {
      const int gx = left + 20 + int(g) * group_w;
      for (size_t b = 0; b < backends.size(); ++b) {
        auto it = cell.find({groups[g], backends[b]});
        if (it == cell.end()) continue;
        const double v = (*it->second)[key].get<double>();
        const int h = int(v / max * (panel_h - 20)), x = gx + 34 * int(b);
        o << "<rect x='" << x << "' y='" << y0 + panel_h - h << "' width='28' height='" << h << "' fill='" << colors[b % 4]
          << "'><title>" << xml_escape(backends[b]) << ": " << fmt(v, digits) << "</title></rect>\n"
          << "<text x='" << x + 14 << "' y='" << y0 + panel_h - h - 4 << "' text-anchor='middle' font-size='10'>" << fmt(v, digits)
          << "</text>\n";
      }
      o << "<text x='" << gx + 17 * int(backends.size()) - 3 << "' y='" << y0 + panel_h + 16 << "' text-anchor='middle'>"
        << xml_escape(groups[g]) << "</text>\n";
    }
  };
  panel(top + 10, "decode_tokens_per_s", "Decode speed (tokens/s, higher is better)", 1);
  panel(top + panel_h + 90, "ttft_s", "Time to first token (s, lower is better)", 3);
  o << "</svg>\n";
  return o.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error(path + ": cannot write");
  out << text;
}

// ---- the run ---------------------------------------------------------------------------

const char* kBenchUsage =
    "usage: cpuchat bench (--model PATH | --synthetic SHAPE) [--backends bf16,int4] [--threads 1,2]\n"
    "                     [--prompt-tokens 128] [--gen-tokens 64] [--repeat 3] [--quant q4g32|q4c]\n"
    "                     [--instance NAME] [--price-per-hour USD] [--json FILE] [--svg FILE] [--markdown FILE]\n"
    "                     [--cache-packed]   (--model: map/save the int4-packed weights next to it)\n"
    "                     [--kv-type fp32|bf16|int8]\n"
    "                     [--concurrency 1,2,4,8 [--long-prompt N] [--step-budget-ms MS] [--batch-tokens N]]\n"
    "         --concurrency: N simultaneous streams through the engine's scheduler for each N (alternating,\n"
    "         --repeat rounds): aggregate and per-stream decode tokens/s, TTFT p50/p95, worst inter-token gap,\n"
    "         cost per 1M tokens; --long-prompt N: then an N-token prompt arrives while 4 streams decode\n"
    "       cpuchat bench --merge A.json,B.json [--json FILE] [--svg FILE] [--markdown FILE]\n"
    "  SHAPE: llama3.1-8b, llama3.2-3b, llama3.2-1b, tiny (random weights made in memory)\n";

void add_uplift(json& results) {
  // int4 ÷ the first baseline backend measured at the same model and thread count.
  for (json& r : results) {
    if (r["backend"] != "int4") continue;
    for (const json& base : results)
      if (base["backend"] != "int4" && base["model"] == r["model"] && base["threads"] == r["threads"]) {
        r["baseline_backend"] = base["backend"];
        r["decode_uplift"] = r["decode_tokens_per_s"].get<double>() / std::max(1e-9, base["decode_tokens_per_s"].get<double>());
        r["prompt_uplift"] = r["prompt_tokens_per_s"].get<double>() / std::max(1e-9, base["prompt_tokens_per_s"].get<double>());
        r["ttft_speedup"] = base["ttft_s"].get<double>() / std::max(1e-9, r["ttft_s"].get<double>());
        break;
      }
  }
}

// ---- many streams at once ----------------------------------------------------------------

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p * double(v.size() - 1);
  const size_t lo = size_t(idx), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - double(lo));
}

// A pseudo-random prompt of ordinary tokens; `stream` makes each stream's prompt its own
// from the first token on, so no stream reuses another's cached prefix.
std::vector<int> bench_prompt(int n, int vocab, int stream) {
  std::vector<int> p(static_cast<size_t>(n));
  const uint64_t span = uint64_t(std::max(1, vocab > 2000 ? vocab - 2000 : vocab - 3));
  const int base = vocab > 2000 ? 1000 : 3;
  for (int i = 0; i < n; ++i) p[size_t(i)] = base + int((uint64_t(i + 7919 * stream) * 2654435761u) % span);
  return p;
}

// One stream's token arrival times.
struct StreamTrace {
  Clock::time_point submitted;
  std::vector<Clock::time_point> tokens;
  GenerateResult result;
};

// Submits every request at once (through the same scheduler the server uses) and waits
// for each on its own thread, as concurrent HTTP clients would.
std::vector<StreamTrace> run_streams(Engine& engine, const std::vector<GenerateRequest>& reqs) {
  std::vector<StreamTrace> traces(reqs.size());
  std::vector<std::shared_ptr<Generation>> gens;
  for (size_t i = 0; i < reqs.size(); ++i) {
    traces[i].submitted = Clock::now();
    gens.push_back(engine.submit(reqs[i]));
  }
  std::vector<std::thread> waiters;
  for (size_t i = 0; i < reqs.size(); ++i)
    waiters.emplace_back([&, i] {
      traces[i].result = gens[i]->wait([&](const TokenEvent& ev) {
        if (ev.id >= 0) traces[i].tokens.push_back(Clock::now());
        return true;
      });
    });
  for (auto& w : waiters) w.join();
  return traces;
}

double max_gap_s(const std::vector<StreamTrace>& traces, Clock::time_point from, Clock::time_point to) {
  double gap = 0;
  for (const StreamTrace& t : traces)
    for (size_t k = 1; k < t.tokens.size(); ++k)
      if (t.tokens[k] > from && t.tokens[k - 1] < to)
        gap = std::max(gap, std::chrono::duration<double>(t.tokens[k] - t.tokens[k - 1]).count());
  return gap;
}

struct ConcurrencyRun {
  double aggregate = 0, per_stream = 0, prompt_tps = 0, max_gap = 0;
  std::vector<double> ttft;
};

// N streams of prompt_tokens + gen_tokens. Aggregate decode speed: the tokens that arrive
// once every stream has its first token, over the time from then until the last finishes.
ConcurrencyRun run_concurrency(Engine& engine, int n, int prompt_tokens, int gen_tokens, int round) {
  std::vector<GenerateRequest> reqs(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    GenerateRequest& r = reqs[size_t(i)];
    r.prompt_ids = bench_prompt(prompt_tokens, engine.info().vocab_size, i + 64 * round);
    r.max_tokens = gen_tokens;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    r.cache_prompt = false;
  }
  const auto t0 = Clock::now();
  std::vector<StreamTrace> traces = run_streams(engine, reqs);
  Clock::time_point all_first = t0, last = t0;
  ConcurrencyRun out;
  for (const StreamTrace& t : traces) {
    if (t.tokens.empty()) throw std::runtime_error("bench: a stream produced no token");
    all_first = std::max(all_first, t.tokens.front());
    last = std::max(last, t.tokens.back());
    out.ttft.push_back(t.result.metrics.ttft_s);
    out.per_stream += t.result.metrics.decode_tokens_per_s / double(n);
  }
  int64_t after = 0;
  for (const StreamTrace& t : traces)
    for (const auto& tp : t.tokens) after += tp > all_first;
  const double window = std::chrono::duration<double>(last - all_first).count();
  out.aggregate = window > 0 ? double(after) / window : 0;
  const double prefill_window = std::chrono::duration<double>(all_first - t0).count();
  out.prompt_tps = prefill_window > 0 ? double(n) * prompt_tokens / prefill_window : 0;
  out.max_gap = max_gap_s(traces, all_first, last);
  return out;
}

// `decoders` streams decode; once all have their first token, a `long_prompt`-token request
// arrives. The worst gap between two tokens of a running stream while it is processed,
// against the worst gap before it came.
json run_interference(Engine& engine, int decoders, int long_prompt, int gen_tokens) {
  const int vocab = engine.info().vocab_size;
  std::vector<std::shared_ptr<Generation>> gens;
  std::vector<StreamTrace> traces(static_cast<size_t>(decoders));
  for (int i = 0; i < decoders; ++i) {
    GenerateRequest r;
    r.prompt_ids = bench_prompt(32, vocab, 1000 + i);
    r.max_tokens = gen_tokens;
    r.sampling.temperature = 0;
    r.ignore_eos = true;
    r.cache_prompt = false;
    traces[size_t(i)].submitted = Clock::now();
    gens.push_back(engine.submit(r));
  }
  std::vector<std::thread> waiters;
  for (int i = 0; i < decoders; ++i)
    waiters.emplace_back([&, i] {
      traces[size_t(i)].result = gens[size_t(i)]->wait([&](const TokenEvent& ev) {
        if (ev.id >= 0) traces[size_t(i)].tokens.push_back(Clock::now());
        return true;
      });
    });
  // Wait until every stream decodes and has a few tokens, then send the long prompt.
  auto decoding = [&] {
    for (const StreamTrace& t : traces)
      if (t.tokens.size() < 4) return false;
    return true;
  };
  while (!decoding()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const auto t_arrive = Clock::now();
  GenerateRequest big;
  big.prompt_ids = bench_prompt(long_prompt, vocab, 2000);
  big.max_tokens = 1;
  big.sampling.temperature = 0;
  big.ignore_eos = true;
  big.cache_prompt = false;
  GenerateResult big_result = engine.submit(big)->wait();
  const auto t_done = Clock::now();
  for (auto& g : gens) g->cancel();  // the decoders have served their purpose
  for (auto& w : waiters) w.join();
  json row = {{"decoding_streams", decoders},
              {"long_prompt_tokens", long_prompt},
              {"long_prompt_ttft_s", big_result.metrics.ttft_s},
              {"max_inter_token_gap_s", max_gap_s(traces, t_arrive, t_done)},
              {"max_inter_token_gap_before_s", max_gap_s(traces, traces[0].submitted, t_arrive)}};
  for (const StreamTrace& t : traces)
    if (t.result.finish_reason != "cancelled") row["warning"] = "a stream finished before the long prompt did";
  return row;
}

std::string concurrency_markdown(const json& rows, const json& interference) {
  std::ostringstream o;
  o << "| model | backend | threads | streams | aggregate decode tok/s | per-stream tok/s | speedup vs 1 | prompt tok/s | "
       "TTFT p50 (s) | TTFT p95 (s) | max gap (s) | peak RSS (GB) | $ / 1M tokens |\n"
    << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const json& r : rows)
    o << "| " << r["model"].get<std::string>() << " | " << r["backend"].get<std::string>() << " | " << r["threads"] << " | "
      << r["concurrency"] << " | " << fmt(r["aggregate_decode_tokens_per_s"], 1) << " | "
      << fmt(r["per_stream_decode_tokens_per_s"], 1) << " | "
      << (r.contains("aggregate_speedup") ? fmt(r["aggregate_speedup"], 2) + "×" : "-") << " | "
      << fmt(r["prompt_tokens_per_s"], 1) << " | " << fmt(r["ttft_p50_s"], 3) << " | " << fmt(r["ttft_p95_s"], 3) << " | "
      << fmt(r["max_inter_token_gap_s"], 3) << " | " << fmt(r["peak_rss_bytes"].get<double>() / 1e9, 2) << " | "
      << fmt(r["cost_per_million_tokens_usd"], 2) << " |\n";
  for (const json& i : interference)
    o << "\nLong prompt while " << i["decoding_streams"] << " streams decode (" << i["model"].get<std::string>() << ", "
      << i["backend"].get<std::string>() << ", " << i["threads"] << " threads): a " << i["long_prompt_tokens"]
      << "-token prompt arrives; worst gap between two tokens of a running stream " << fmt(i["max_inter_token_gap_s"], 3)
      << " s (before it arrived: " << fmt(i["max_inter_token_gap_before_s"], 3) << " s); its TTFT "
      << fmt(i["long_prompt_ttft_s"], 2) << " s.\n";
  return o.str();
}

// Aggregate decode tokens/s against the number of streams, one line per (model, backend, threads).
std::string concurrency_svg(const json& rows) {
  std::map<std::string, std::vector<std::pair<int, double>>> lines;
  int max_n = 1;
  double max_v = 1;
  for (const json& r : rows) {
    const std::string key = r["model"].get<std::string>() + " " + r["backend"].get<std::string>() + " " +
                            std::to_string(r["threads"].get<int>()) + "T";
    lines[key].push_back({r["concurrency"].get<int>(), r["aggregate_decode_tokens_per_s"].get<double>()});
    max_n = std::max(max_n, r["concurrency"].get<int>());
    max_v = std::max(max_v, r["aggregate_decode_tokens_per_s"].get<double>());
  }
  const int W = 640, H = 380, L = 70, T = 50, PW = 420, PH = 260;
  const char* colors[] = {"#2f80ed", "#27ae60", "#eb5757", "#9b51e0", "#f2994a", "#9aa5b1"};
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "' font-family='sans-serif' font-size='12'>\n"
    << "<rect width='100%' height='100%' fill='white'/>\n<text x='" << L << "' y='24' font-size='16' font-weight='bold'>"
    << "Aggregate decode tokens/s vs concurrent streams</text>\n"
    << "<line x1='" << L << "' y1='" << T + PH << "' x2='" << L + PW << "' y2='" << T + PH << "' stroke='#333'/>\n"
    << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << T + PH << "' stroke='#333'/>\n";
  auto x_of = [&](int n) { return L + int(double(n - 1) / std::max(1, max_n - 1) * PW); };
  auto y_of = [&](double v) { return T + PH - int(v / max_v * (PH - 10)); };
  for (int n = 1; n <= max_n; n *= 2)
    o << "<text x='" << x_of(n) << "' y='" << T + PH + 16 << "' text-anchor='middle'>" << n << "</text>\n";
  o << "<text x='" << L + PW / 2 << "' y='" << T + PH + 34 << "' text-anchor='middle'>streams</text>\n"
    << "<text x='" << L - 8 << "' y='" << T + 4 << "' text-anchor='end'>" << fmt(max_v, 0) << "</text>\n";
  int c = 0;
  for (auto& [key, pts] : lines) {
    std::sort(pts.begin(), pts.end());
    const char* col = colors[c % 6];
    o << "<polyline fill='none' stroke='" << col << "' stroke-width='2' points='";
    for (auto& [n, v] : pts) o << x_of(n) << "," << y_of(v) << " ";
    o << "'/>\n";
    for (auto& [n, v] : pts)
      o << "<circle cx='" << x_of(n) << "' cy='" << y_of(v) << "' r='3' fill='" << col << "'><title>" << xml_escape(key) << ", "
        << n << " streams: " << fmt(v, 1) << " tok/s</title></circle>\n";
    o << "<rect x='" << L + PW + 20 << "' y='" << T + 16 * c << "' width='10' height='10' fill='" << col << "'/><text x='"
      << L + PW + 35 << "' y='" << T + 9 + 16 * c << "'>" << xml_escape(key) << "</text>\n";
    ++c;
  }
  o << "</svg>\n";
  return o.str();
}

LoadOptions bench_load_options(const Args& a, Backend backend, int threads, int ctx) {
  LoadOptions o;
  o.model_path = a.get("--model");
  o.synthetic = a.get("--synthetic");
  o.backend = backend;
  o.quant = parse_quant(a.get("--quant", "q4g32"));
  o.threads = threads;
  o.ctx = ctx;
  o.require_tokenizer = false;
  o.cache_packed = a.has("--cache-packed");
  o.kv_type = parse_kv_type(a.get("--kv-type", "bf16"));
  return o;
}

int bench_body(const Args& a) {
  json report;
  if (a.has("--merge")) {
    report["results"] = json::array();
    for (const auto& f : a.get_list("--merge", "")) {
      std::ifstream in(f);
      if (!in) throw std::runtime_error(f + ": cannot open");
      json part = json::parse(in, nullptr, false);
      if (part.is_discarded() || !part.contains("results")) throw std::runtime_error(f + ": not a cpuchat bench JSON");
      if (!report.contains("machine")) report["machine"] = part["machine"];
      for (auto& r : part["results"]) report["results"].push_back(r);
    }
  } else {
    if (a.has("--model") == a.has("--synthetic")) throw UsageError("give exactly one of --model and --synthetic");
    const auto backends = a.get_list("--backends", "bf16,int4");
    std::vector<int> threads;
    for (const auto& t : a.get_list("--threads", "1," + std::to_string(physical_cores()))) {
      char* end = nullptr;
      long v = strtol(t.c_str(), &end, 10);
      if (*end || v < 1 || v > 1024) throw UsageError("--threads expects a list of positive integers, got '" + t + "'");
      if (std::find(threads.begin(), threads.end(), int(v)) == threads.end()) threads.push_back(int(v));
    }
    const int prompt_tokens = int(a.get_int("--prompt-tokens", 128, 1, 1 << 20));
    const int gen_tokens = int(a.get_int("--gen-tokens", 64, 2, 1 << 20));
    const int repeat = int(a.get_int("--repeat", 3, 1, 1000));
    server::Pricing pricing;
    try {
      pricing = server::resolve_pricing(a.has("--instance") ? std::optional<std::string>(a.get("--instance")) : std::nullopt,
                                        a.has("--price-per-hour") ? std::optional<double>(a.get_double("--price-per-hour", 0, 0, 1e6))
                                                                  : std::nullopt,
                                        server::Pricing{});
    } catch (const std::invalid_argument& e) {
      throw UsageError(e.what());
    }
    std::vector<Backend> parsed;
    for (const auto& b : backends) {
      try {
        parsed.push_back(parse_backend(b));
      } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
      }
    }

    if (a.has("--concurrency")) {
      std::vector<int> levels;
      for (const auto& t : a.get_list("--concurrency", "")) {
        char* end = nullptr;
        long v = strtol(t.c_str(), &end, 10);
        if (*end || v < 1 || v > 256) throw UsageError("--concurrency expects a list of stream counts (1..256), got '" + t + "'");
        levels.push_back(int(v));
      }
      const int long_prompt = int(a.get_int("--long-prompt", 0, 0, 1 << 20));
      const int max_n = std::max(*std::max_element(levels.begin(), levels.end()), long_prompt ? 5 : 1);
      Progress progress;
      progress.total = 2 * int(threads.size()) +
                       int(parsed.size()) * (1 + int(threads.size()) * (1 + repeat * int(levels.size()) + (long_prompt ? 1 : 0)));
      json machine = {{"cpu", cpu_model()}, {"cores", physical_cores()}, {"isa", ""}, {"read_bandwidth_gbs", json::object()},
                      {"read_bandwidth_gbs_before", json::object()}, {"read_bandwidth_gbs_after", json::object()}};
      for (int t : threads) {
        machine["read_bandwidth_gbs_before"][std::to_string(t)] = read_bandwidth_gbs(t);
        progress.step("read bandwidth, " + std::to_string(t) + " thread(s)");
      }
      json rows = json::array(), interference = json::array();
      for (Backend backend : parsed) {
        reset_peak_rss();
        LoadOptions o = bench_load_options(a, backend, threads.back(), std::max(prompt_tokens + gen_tokens + 8, long_prompt + 64));
        o.batch.slots = max_n;
        o.batch.max_queue = max_n;
        o.batch.step_budget_ms = a.get_double("--step-budget-ms", o.batch.step_budget_ms, 1, 1e6);
        o.batch.batch_tokens = int(a.get_int("--batch-tokens", o.batch.batch_tokens, 1, 1 << 16));
        auto engine = Engine::load(o);
        const ModelInfo& info = engine->info();
        if (backend == Backend::INT4) machine["isa"] = info.isa;
        progress.step("loaded " + info.name + " (" + info.backend + ") in " + fmt(info.load_time_s) + " s");
        for (int t : threads) {
          engine->set_threads(t);
          run_concurrency(*engine, 1, prompt_tokens, gen_tokens, 0);  // warm-up
          progress.step(info.name + " " + info.backend + " " + std::to_string(t) + "T warm-up");
          std::map<int, std::vector<ConcurrencyRun>> runs;
          for (int r = 0; r < repeat; ++r)  // alternating: every level once per round
            for (int n : levels) {
              runs[n].push_back(run_concurrency(*engine, n, prompt_tokens, gen_tokens, r + 1));
              progress.step(info.name + " " + info.backend + " " + std::to_string(t) + "T x" + std::to_string(n) + ": " +
                            fmt(runs[n].back().aggregate, 1) + " tok/s");
            }
          for (int n : levels) {
            std::vector<double> agg, per, ptps, gap, ttft;
            for (const ConcurrencyRun& c : runs[n]) {
              agg.push_back(c.aggregate);
              per.push_back(c.per_stream);
              ptps.push_back(c.prompt_tps);
              gap.push_back(c.max_gap);
              ttft.insert(ttft.end(), c.ttft.begin(), c.ttft.end());
            }
            const double aggregate = median(agg);
            const auto cost = server::compute_cost(pricing.price_per_hour_usd, aggregate, 0);
            rows.push_back({{"model", info.name},
                            {"backend", info.backend},
                            {"quant", info.quant},
                            {"isa", info.isa},
                            {"kv_type", info.kv_type},
                            {"threads", t},
                            {"concurrency", n},
                            {"prompt_tokens", prompt_tokens},
                            {"gen_tokens", gen_tokens},
                            {"repeat", repeat},
                            {"aggregate_decode_tokens_per_s", aggregate},
                            {"aggregate_decode_tokens_per_s_stats", stats(agg)},
                            {"per_stream_decode_tokens_per_s", median(per)},
                            {"prompt_tokens_per_s", median(ptps)},
                            {"ttft_p50_s", percentile(ttft, 0.5)},
                            {"ttft_p95_s", percentile(ttft, 0.95)},
                            {"max_inter_token_gap_s", *std::max_element(gap.begin(), gap.end())},
                            {"peak_rss_bytes", peak_rss_bytes()},
                            {"instance", pricing.instance},
                            {"price_per_hour_usd", pricing.price_per_hour_usd},
                            {"cost_per_million_tokens_usd",
                             cost.per_million_tokens_usd ? json(*cost.per_million_tokens_usd) : json(nullptr)}});
          }
          if (long_prompt) {
            json row = run_interference(*engine, 4, long_prompt, o.ctx - 40);
            row["model"] = info.name;
            row["backend"] = info.backend;
            row["threads"] = t;
            interference.push_back(row);
            progress.step(info.name + " " + info.backend + " " + std::to_string(t) + "T long prompt: max gap " +
                          fmt(row["max_inter_token_gap_s"], 3) + " s");
          }
        }
      }
      for (int t : threads) {
        const std::string key = std::to_string(t);
        machine["read_bandwidth_gbs_after"][key] = read_bandwidth_gbs(t);
        machine["read_bandwidth_gbs"][key] =
            std::max(machine["read_bandwidth_gbs_before"][key].get<double>(), machine["read_bandwidth_gbs_after"][key].get<double>());
        progress.step("read bandwidth again, " + key + " thread(s)");
      }
      // Each level against one stream of the same model, backend and thread count.
      for (json& r : rows)
        for (const json& one : rows)
          if (one["concurrency"] == 1 && one["model"] == r["model"] && one["backend"] == r["backend"] && one["threads"] == r["threads"]) {
            r["aggregate_speedup"] = r["aggregate_decode_tokens_per_s"].get<double>() /
                                     std::max(1e-9, one["aggregate_decode_tokens_per_s"].get<double>());
            if (!r["cost_per_million_tokens_usd"].is_null() && !one["cost_per_million_tokens_usd"].is_null())
              r["cost_ratio_vs_single_stream"] = r["cost_per_million_tokens_usd"].get<double>() /
                                                 std::max(1e-12, one["cost_per_million_tokens_usd"].get<double>());
          }
      report = {{"machine", machine}, {"results", json::array()}, {"concurrency", rows}, {"long_prompt", interference}};
      std::ostringstream md;
      md << "Machine: " << machine["cpu"].get<std::string>() << ", read bandwidth before/after (GB/s):";
      for (auto& [k, v] : machine["read_bandwidth_gbs_before"].items())
        md << " " << k << "T " << fmt(v) << "/" << fmt(machine["read_bandwidth_gbs_after"][k]);
      md << ".\n\n" << concurrency_markdown(rows, interference);
      if (a.has("--json")) write_file(a.get("--json"), report.dump(2) + "\n");
      if (a.has("--markdown")) write_file(a.get("--markdown"), md.str());
      if (a.has("--svg")) write_file(a.get("--svg"), concurrency_svg(rows));
      std::cout << md.str();
      return 0;
    }

    Progress progress;
    progress.total = 2 * int(threads.size()) + int(parsed.size()) * (1 + int(threads.size()) * (repeat + 1));
    json machine = {{"cpu", cpu_model()}, {"cores", physical_cores()}, {"isa", ""}, {"read_bandwidth_gbs", json::object()}};
    for (int t : threads) {
      machine["read_bandwidth_gbs"][std::to_string(t)] = read_bandwidth_gbs(t);
      progress.step("read bandwidth, " + std::to_string(t) + " thread(s)");
    }
    report["results"] = json::array();
    for (Backend backend : parsed) {
      reset_peak_rss();
      LoadOptions o = bench_load_options(a, backend, threads.back(), prompt_tokens + gen_tokens + 8);
      o.batch.slots = 1;
      auto engine = Engine::load(o);
      const ModelInfo& info = engine->info();
      if (backend == Backend::INT4) machine["isa"] = info.isa;
      progress.step("loaded " + info.name + " (" + info.backend + ") in " + fmt(info.load_time_s) + " s");
      // A fixed pseudo-random prompt (the same for every backend) of ordinary tokens.
      std::vector<int> prompt(prompt_tokens);
      for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 1000 + int((uint64_t(i) * 2654435761u) % uint64_t(std::max(1, info.vocab_size - 2000)));
      if (info.vocab_size <= 2000)
        for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 3 + i % std::max(1, info.vocab_size - 3);
      for (int t : threads) {
        engine->set_threads(t);
        GenerateRequest req;
        req.prompt_ids = prompt;
        req.max_tokens = gen_tokens;
        req.sampling.temperature = 0;
        req.ignore_eos = true;
        req.cache_prompt = false;  // every run processes the whole prompt
        std::vector<double> ttft, prompt_tps, decode_tps, total;
        for (int r = 0; r <= repeat; ++r) {  // r == 0 is the warm-up
          auto session = engine->new_session();
          GenerateResult res = session->generate(req);
          if (r > 0) {
            ttft.push_back(res.metrics.ttft_s);
            prompt_tps.push_back(res.metrics.prompt_tokens_per_s);
            decode_tps.push_back(res.metrics.decode_tokens_per_s);
            total.push_back(res.metrics.total_time_s);
          }
          progress.step(info.name + " " + info.backend + " " + std::to_string(t) + "T " + (r ? "run " + std::to_string(r) : "warm-up") +
                        ": " + fmt(res.metrics.decode_tokens_per_s, 1) + " tok/s");
        }
        const double decode = median(decode_tps);
        const auto cost = server::compute_cost(pricing.price_per_hour_usd, decode, median(total));
        json row = {{"model", info.name},
                    {"backend", info.backend},
                    {"quant", info.quant},
                    {"isa", info.isa},
                    {"threads", t},
                    {"prompt_tokens", prompt_tokens},
                    {"gen_tokens", gen_tokens},
                    {"repeat", repeat},
                    {"ttft_s", median(ttft)},
                    {"prompt_tokens_per_s", median(prompt_tps)},
                    {"decode_tokens_per_s", decode},
                    {"ttft_s_stats", stats(ttft)},
                    {"prompt_tokens_per_s_stats", stats(prompt_tps)},
                    {"decode_tokens_per_s_stats", stats(decode_tps)},
                    {"weight_bytes_per_token", info.weight_bytes_per_token},
                    {"read_bandwidth_gbs", nullptr},  // filled in after the closing probe
                    {"roofline_tokens_per_s", nullptr},
                    {"roofline_fraction", nullptr},
                    {"peak_rss_bytes", peak_rss_bytes()},
                    {"load_time_s", info.load_time_s},
                    {"n_params", info.n_params},
                    {"instance", pricing.instance},
                    {"price_per_hour_usd", pricing.price_per_hour_usd},
                    {"cost_per_million_tokens_usd", cost.per_million_tokens_usd ? json(*cost.per_million_tokens_usd) : json(nullptr)}};
        report["results"].push_back(row);
      }
    }
    // Probe again and keep the best: the roofline is the machine's limit, not its worst moment.
    for (int t : threads) {
      const std::string key = std::to_string(t);
      machine["read_bandwidth_gbs"][key] = std::max(machine["read_bandwidth_gbs"][key].get<double>(), read_bandwidth_gbs(t));
      progress.step("read bandwidth again, " + key + " thread(s)");
    }
    for (json& row : report["results"]) {
      const double bw = machine["read_bandwidth_gbs"][std::to_string(row["threads"].get<int>())].get<double>();
      const double roofline = bw * 1e9 / row["weight_bytes_per_token"].get<double>();
      row["read_bandwidth_gbs"] = bw;
      row["roofline_tokens_per_s"] = roofline;
      row["roofline_fraction"] = row["decode_tokens_per_s"].get<double>() / roofline;
    }
    report["machine"] = machine;
  }
  add_uplift(report["results"]);
  const std::string md = markdown(report);
  if (a.has("--json")) write_file(a.get("--json"), report.dump(2) + "\n");
  if (a.has("--markdown")) write_file(a.get("--markdown"), md);
  if (a.has("--svg")) write_file(a.get("--svg"), svg_chart(report));
  std::cout << md;
  return 0;
}

}  // namespace

int bench_command(int argc, char** argv) {
  return run_command("bench", kBenchUsage, bench_body, argc, argv,
                     {"--model", "--synthetic", "--backends", "--threads", "--prompt-tokens", "--gen-tokens", "--repeat", "--quant",
                      "--instance", "--price-per-hour", "--json", "--svg", "--markdown", "--merge", "--kv-type", "--concurrency",
                      "--long-prompt", "--step-budget-ms", "--batch-tokens"},
                     {"--cache-packed"});
}

}  // namespace cpuchat

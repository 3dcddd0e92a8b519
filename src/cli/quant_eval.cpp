// cpuchat quant-eval: how far each weight format moves a model's next-token distributions
// from fp32 on a text (the accuracy table of issue 14).
//
// For every scored position t of the text (independent windows of the context length, each
// starting with BOS, as `cpuchat perplexity` does): KL(p_fp32 || p_q) in nats, whether the
// argmax token agrees with fp32's, and the log-likelihood of the real next token. Reports the
// means per format. The fp32 logits are computed once and kept.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cpuchat/engine.h"

namespace cpuchat {
namespace {

using json = nlohmann::json;

const char* kQuantEvalUsage =
    "usage: cpuchat quant-eval --model PATH --text FILE [--formats fp32,bf16,q4g32,q4c,q4k] [--ctx N]\n"
    "                          [--threads N] [--json]\n"
    "  KL divergence from fp32, top-1 agreement with fp32 and perplexity of each format on FILE.\n"
    "  CPUCHAT_Q4_SCALE_SEARCH=off quantizes q4g32/q4c with the old max/min scale (no search).\n";

// Log-softmax of one row, in double.
std::vector<double> log_softmax(const float* row, int vocab) {
  const double max = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - max);
  const double log_z = max + std::log(sum);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int v = 0; v < vocab; ++v) out[v] = double(row[v]) - log_z;
  return out;
}

std::vector<std::vector<int>> windows_of(const std::vector<int>& ids, int window, int bos) {
  std::vector<std::vector<int>> out;
  for (size_t start = 0; start < ids.size(); start += size_t(window - 1)) {
    std::vector<int> chunk;
    if (bos >= 0) chunk.push_back(bos);
    chunk.insert(chunk.end(), ids.begin() + start, ids.begin() + std::min(ids.size(), start + window - chunk.size()));
    if (chunk.size() < 2) break;
    out.push_back(chunk);
    if (start + (chunk.size() - (bos >= 0)) >= ids.size()) break;
  }
  return out;
}

LoadOptions options_for(const Args& a, const std::string& format) {
  LoadOptions o;
  o.model_path = a.require("--model");
  o.tokenizer_path = a.get("--tokenizer");
  o.threads = int(a.get_int("--threads", 0, 0, 1024));
  o.ctx = int(a.get_int("--ctx", 0, 0, 1 << 24));
  try {
    if (format == "fp32" || format == "bf16") {
      o.backend = parse_backend(format);
    } else {
      o.backend = Backend::INT4;
      o.quant = parse_quant(format);
    }
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--formats: ") + e.what());
  }
  return o;
}

int quant_eval_body(const Args& a) {
  const std::string path = a.require("--text");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::vector<std::string> formats = a.get_list("--formats", "fp32,bf16,q4g32,q4c,q4k");
  for (const auto& f : formats) options_for(a, f);  // bad names fail before any loading

  auto reference = Engine::load(options_for(a, "fp32"));
  const int vocab = reference->info().vocab_size;
  const Tokenizer& tok = reference->tokenizer();
  const std::vector<int> ids = tok.encode(ss.str());
  if (ids.size() < 2) throw std::runtime_error(path + ": too little text to score");
  const auto windows = windows_of(ids, reference->info().ctx, tok.bos_id);
  std::vector<std::vector<float>> ref_logits;
  for (const auto& w : windows) ref_logits.push_back(reference->logits(w));
  reference.reset();

  json results = json::array();
  for (const std::string& format : formats) {
    std::unique_ptr<Engine> engine = format == "fp32" ? nullptr : Engine::load(options_for(a, format));
    double kl = 0, nll = 0;
    int64_t agree = 0, scored = 0;
    for (size_t wi = 0; wi < windows.size(); ++wi) {
      const std::vector<int>& chunk = windows[wi];
      const std::vector<float> logits = engine ? engine->logits(chunk) : ref_logits[wi];
      for (size_t i = 0; i + 1 < chunk.size(); ++i) {
        const float* p_row = ref_logits[wi].data() + i * size_t(vocab);
        const float* q_row = logits.data() + i * size_t(vocab);
        const std::vector<double> lp = log_softmax(p_row, vocab), lq = log_softmax(q_row, vocab);
        double kl_t = 0;
        for (int v = 0; v < vocab; ++v) kl_t += std::exp(lp[v]) * (lp[v] - lq[v]);
        kl += kl_t;
        nll -= lq[chunk[i + 1]];
        agree += std::max_element(p_row, p_row + vocab) - p_row == std::max_element(q_row, q_row + vocab) - q_row;
        ++scored;
      }
    }
    const double n = double(scored);
    results.push_back({{"format", format},
                       {"kl_divergence", kl / n},
                       {"top1_agreement", double(agree) / n},
                       {"perplexity", std::exp(nll / n)},
                       {"tokens", scored}});
  }
  if (a.has("--json")) {
    std::cout << json{{"text", path}, {"results", results}}.dump() << std::endl;
  } else {
    printf("%-8s %14s %10s %11s  (%lld tokens)\n", "format", "KL vs fp32", "top-1 %", "perplexity",
           (long long)results[0]["tokens"].get<int64_t>());
    for (const auto& r : results) {
      printf("%-8s %14.6f %10.2f %11.4f\n", r["format"].get<std::string>().c_str(), r["kl_divergence"].get<double>(),
             100 * r["top1_agreement"].get<double>(), r["perplexity"].get<double>());
    }
  }
  return 0;
}

}  // namespace

int quant_eval_command(int argc, char** argv) {
  return run_command("quant-eval", kQuantEvalUsage, quant_eval_body, argc, argv,
                     {"--model", "--tokenizer", "--text", "--formats", "--ctx", "--threads"}, {"--json"});
}

}  // namespace cpuchat

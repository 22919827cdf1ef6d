// `amused tokenize`: prints, per prompt, the token ids the pipelines feed the text encoder
// (BOS + text + EOS + padding, 77 ids), one JSON array per line.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "amused/error.h"
#include "amused/repo.h"
#include "amused/tokenizer.h"
#include "command.h"

namespace {

namespace fs = std::filesystem;

// A diffusers model folder (<model>/tokenizer/vocab.json), a tokenizer folder (<dir>/vocab.json), or
// a hub repo id resolved through the Hugging Face cache (downloaded unless offline).
fs::path resolve_tokenizer_dir(const std::string& model, bool offline) {
  fs::path p(model);
  if (!fs::exists(p)) {
    if (model.find('/') == std::string::npos || model.front() == '.' || model.front() == '/')
      throw amused::InvalidArgument(
          "--model '" + model +
          "' does not exist: expected a diffusers model folder (with tokenizer/), a tokenizer folder "
          "(with vocab.json) or a hub repo id such as amused/amused-256");
    amused::RepoOptions ro;
    ro.offline = offline;
    p = amused::resolve_model_path(model, ro);
  }
  if (fs::is_regular_file(p / "tokenizer" / "vocab.json")) return p / "tokenizer";
  if (fs::is_regular_file(p / "vocab.json")) return p;
  throw amused::ConfigError("--model '" + model + "': no tokenizer found: expected '" +
                            (p / "tokenizer" / "vocab.json").string() +
                            "' (diffusers model folder) or '" + (p / "vocab.json").string() +
                            "' (tokenizer folder)");
}

std::vector<std::string> read_prompt_lines(const std::string& path) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      throw amused::InvalidArgument("--file '" + path + "' is a folder; give a text file with one prompt per line");
    file.open(path, std::ios::binary);
    if (!file)
      throw amused::IoError("--file '" + path + "' cannot be read (missing or no permission)");
    in = &file;
  }
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(*in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    lines.push_back(line);
  }
  return lines;
}

struct Options {
  std::string model;
  std::string file;
  std::vector<std::string> prompts;
  int64_t max_length = 77;
  bool tokens = false;
  bool offline = false;
};

amused::cli::Registrar reg(
    "tokenize", "Print the CLIP token ids of prompts (one JSON array of 77 ids per line)",
    [](CLI::App& sub) {
      auto opt = std::make_shared<Options>();
      sub.add_option("-m,--model", opt->model,
                     "Diffusers model folder (containing tokenizer/), tokenizer folder, or hub repo id")
          ->required();
      sub.add_option("-f,--file", opt->file, "Text file with one prompt per line ('-' = stdin)");
      sub.add_option("prompts", opt->prompts,
                     "Prompts (each one argument; printed before the --file ones)");
      sub.add_option("--max-length", opt->max_length, "Padded length (the pipelines use 77)")
          ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
      sub.add_flag("--offline", opt->offline, "Never use the network (also HF_HUB_OFFLINE=1)");
      sub.add_flag("--tokens", opt->tokens,
                   "Print the BPE token strings (untruncated) instead of padded ids");
      return std::function<int()>([opt] {
        std::vector<std::string> prompts = opt->prompts;
        if (!opt->file.empty()) {
          auto lines = read_prompt_lines(opt->file);
          if (lines.empty())
            throw amused::InvalidArgument("--file '" + opt->file + "' contains no prompts");
          prompts.insert(prompts.end(), lines.begin(), lines.end());
        }
        if (prompts.empty())
          throw amused::InvalidArgument(
              "no prompts: give them as arguments or with --file PROMPTS.txt");
        const auto tokenizer =
            amused::ClipTokenizer::from_folder(resolve_tokenizer_dir(opt->model, opt->offline));
        for (const auto& p : prompts) {
          const nlohmann::json row =
              opt->tokens ? nlohmann::json(tokenizer->tokenize(p))
                          : nlohmann::json(tokenizer->encode_padded(p, opt->max_length));
          std::printf("%s\n",
                      row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        }
        return 0;
      });
    });

}  // namespace

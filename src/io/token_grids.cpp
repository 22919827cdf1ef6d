// Token grid files: int64 [B, h, w] under the key `tokens` in a safetensors file.
#include "amused/error.h"
#include "amused/image_io.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace amused {

namespace {
std::string encode_token_grids_named(const std::vector<TokenGrid>& grids, const std::string& what) {
  if (grids.empty()) throw InvalidArgument("no token grids to save to " + what);
  const int64_t h = grids[0].height, w = grids[0].width;
  auto t = torch::empty({static_cast<int64_t>(grids.size()), h, w}, torch::kInt64);  // [B, h, w]
  for (size_t b = 0; b < grids.size(); ++b) {
    if (grids[b].height != h || grids[b].width != w || static_cast<int64_t>(grids[b].ids.size()) != h * w)
      throw InvalidArgument("token grids of different sizes cannot share one file (" + what + ")");
    std::memcpy(t[static_cast<int64_t>(b)].data_ptr<int64_t>(), grids[b].ids.data(), sizeof(int64_t) * h * w);
  }
  return io::serialize_safetensors({{"tokens", t}}, {{"format", "pt"}});
}
}  // namespace

std::string encode_token_grids(const std::vector<TokenGrid>& grids) {
  return encode_token_grids_named(grids, "a file in memory");
}

void save_token_grids(const std::filesystem::path& path, const std::vector<TokenGrid>& grids) {
  io::write_file_atomic(path, encode_token_grids_named(grids, "'" + path.string() + "'"));
}

std::vector<TokenGrid> load_token_grids(const std::filesystem::path& path) {
  auto f = io::SafeTensorsFile::open(path);
  if (!f->contains("tokens"))
    throw CheckpointError("'" + path.string() + "' has no tensor named 'tokens' (expected int64 [B, h, w])");
  auto t = f->get("tokens");
  if (t.dim() == 2) t = t.unsqueeze(0);
  if (t.dim() != 3 || (t.scalar_type() != torch::kInt64 && t.scalar_type() != torch::kInt32))
    throw CheckpointError("'" + path.string() + "': tensor 'tokens' must be int64 [B, h, w]");
  t = t.to(torch::kInt64).contiguous();
  std::vector<TokenGrid> out;
  for (int64_t b = 0; b < t.size(0); ++b) {
    TokenGrid g;
    g.height = t.size(1);
    g.width = t.size(2);
    const int64_t* p = t[b].data_ptr<int64_t>();
    g.ids.assign(p, p + g.height * g.width);
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace amused

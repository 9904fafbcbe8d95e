// Helper of the safetensors interop test (safetensors_interop.py, ctest safetensors_python):
//   safetensors_tool write <dir>   writes <dir>/checkpoint.safetensors and <dir>/queue.safetensors
//                                  with the values the script expects (formulas below)
//   safetensors_tool read <file>   loads <file> as an nn::checkpoint and prints every entry:
//                                  "<name> <dtype> <extents...> : <values...>" (floats as %a)
#include <cstdio>
#include <string>
#include <vector>

#include "distill/contrastive/sample_queue.hpp"
#include "distill/nn/checkpoint.hpp"

using namespace distill;

namespace {

int check(const status& st) {
  if (st.ok()) return 0;
  std::fprintf(stderr, "%s\n", st.to_string().c_str());
  return 1;
}

int write(const std::string& dir) {
  nn::checkpoint ck;
  std::vector<float> w(12);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.5f * static_cast<float>(i) - 1.0f;  // param/w [3, 4]
  std::vector<double> b(4);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 1.0 / static_cast<double>(i + 1);  // param/b [4]
  const std::int64_t step = 42;
  if (check(ck.put("param/w", w.data(), {3, 4})) || check(ck.put("param/b", b.data(), {4})) || check(ck.put("optim/step", &step, {1})))
    return 1;
  ck.put_string("name", "distill");  // meta/name, U8
  if (check(ck.save(dir + "/checkpoint.safetensors", {.format = file_format::safetensors}))) return 1;

  // Queue K = 4, D = 3 with ids: rows r = 0..5 are (r, r + 0.5, -r), ids 100 + r, unnormalised;
  // row r lands in slot r mod 4, so the state is write position 2, fill count 4.
  const cpu ctx{};
  host_sample_queue<float> q(4, 3, true);
  std::vector<float> rows;
  std::vector<std::int64_t> ids;
  for (int r = 0; r < 6; ++r) {
    rows.insert(rows.end(), {static_cast<float>(r), static_cast<float>(r) + 0.5f, -static_cast<float>(r)});
    ids.push_back(100 + r);
  }
  if (check(sample_queue_enqueue(ctx, q.queue(), make_view(rows.data(), 6, 3), make_view(ids.data(), 6), {.normalize = false})))
    return 1;
  return check(sample_queue_save(ctx, q.queue(), dir + "/queue.safetensors", {.format = file_format::safetensors}));
}

int read(const std::string& path) {
  nn::checkpoint ck;
  if (check(nn::checkpoint::load(path, ck))) return 1;
  for (const auto& [name, e] : ck.entries()) {
    std::printf("%s %s", name.c_str(), nn::checkpoint_detail::safetensors_dtype(e.dtype));
    for (const index_t d : e.shape) std::printf(" %lld", static_cast<long long>(d));
    std::printf(" :");
    const index_t n = e.elements();
    for (index_t i = 0; i < n; ++i) {
      const unsigned char* p = e.bytes.data();
      switch (e.dtype) {
        case nn::checkpoint_dtype::f32: { float v; std::memcpy(&v, p + 4 * i, 4); std::printf(" %a", static_cast<double>(v)); break; }
        case nn::checkpoint_dtype::f64: { double v; std::memcpy(&v, p + 8 * i, 8); std::printf(" %a", v); break; }
        case nn::checkpoint_dtype::i64: { std::int64_t v; std::memcpy(&v, p + 8 * i, 8); std::printf(" %lld", static_cast<long long>(v)); break; }
        case nn::checkpoint_dtype::u8: std::printf(" %u", static_cast<unsigned>(p[i])); break;
      }
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc == 3 ? argv[1] : "";
  if (cmd == "write") return write(argv[2]);
  if (cmd == "read") return read(argv[2]);
  std::fprintf(stderr, "usage: safetensors_tool write <dir> | read <file>\n");
  return 2;
}

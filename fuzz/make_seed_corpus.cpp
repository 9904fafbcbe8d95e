// SPDX-License-Identifier: MIT
// Writes the seed corpus of the file-format targets: a few small valid files per format, so the
// fuzzers start from inputs that pass the checksums and reach the deep checks. Run it again when
// a format changes (rules seeds are the example's rule files, copied by hand):
//   cmake --build build --target distill_fuzz_seed_corpus && build/fuzz/distill_fuzz_seed_corpus fuzz/corpus
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "../examples/vqa_spatial_kd/src/dataset_io.hpp"
#include "distill/contrastive/sample_queue.hpp"
#include "distill/nn/checkpoint.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/optimizer.hpp"

namespace fs = std::filesystem;
using namespace distill;

namespace {

void write(const fs::path& path, std::span<const unsigned char> bytes) {
  fs::create_directories(path.parent_path());
  throw_if_error(write_file_atomically("make_seed_corpus", path.string(), bytes));
  std::printf("%s (%zu bytes)\n", path.c_str(), bytes.size());
}

template <class T>
void queue_seed(const fs::path& path, index_t K, index_t D, bool ids, index_t rows, file_format format = file_format::native) {
  host_sample_queue<T> q(K, D, ids);
  std::vector<float> keys(static_cast<std::size_t>(rows * D));
  for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<float>(i % 7) - 3.0f;
  std::vector<std::int64_t> id(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < id.size(); ++i) id[i] = static_cast<std::int64_t>(i * 3);
  throw_if_error(sample_queue_enqueue(cpu{1}, q.queue(), make_view(static_cast<const float*>(keys.data()), rows, D),
                                      ids ? make_view(static_cast<const std::int64_t*>(id.data()), rows) : host_view<const std::int64_t, 1>{}));
  std::vector<unsigned char> image;
  throw_if_error(sample_queue_serialize(cpu{1}, q.queue(), image, format));
  write(path, image);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = argc > 1 ? argv[1] : "fuzz/corpus";
  // checkpoints: empty, metadata only, a layer with Adam state
  write(root / "checkpoint" / "empty.ckpt", nn::checkpoint{}.serialize());
  nn::checkpoint meta;
  meta.put_int("epoch", 3);
  meta.put_string("meta", "{\"seconds\": 1.5}");
  write(root / "checkpoint" / "meta.ckpt", meta.serialize());
  nn::linear<float> fc("fc", 3, 2, {.seed = 1});
  auto params = fc.parameters();
  nn::adam<float> adam(params, {.lr = 0.01});
  for (auto* p : params) throw_if_error(p->grad.copy_from_host(std::vector<float>(static_cast<std::size_t>(p->size()), 0.5f)));
  throw_if_error(adam.step(cpu{1}));
  nn::checkpoint model;
  throw_if_error(model.add_parameters(params));
  throw_if_error(model.add_optimizer(adam));
  model.put_int("epoch", 1);
  write(root / "checkpoint" / "linear_adam.ckpt", model.serialize());
  // sample queues: each dtype, with and without ids, partly filled and wrapped
  queue_seed<float>(root / "sample_queue" / "f32_ids_partial.bin", 4, 3, true, 2);
  queue_seed<double>(root / "sample_queue" / "f64_full.bin", 3, 2, false, 5);
  queue_seed<bfloat16>(root / "sample_queue" / "bf16_ids_wrapped.bin", 5, 2, true, 7);
  queue_seed<float16>(root / "sample_queue" / "f16_empty.bin", 2, 4, false, 0);
  // safetensors: the checkpoint and queue seeds in that format, and one as Python's json writes it
  write(root / "checkpoint" / "linear_adam.safetensors", model.serialize_safetensors());
  queue_seed<float>(root / "sample_queue" / "f32_ids_wrapped.safetensors", 4, 3, true, 6, file_format::safetensors);
  write(root / "safetensors" / "checkpoint.safetensors", model.serialize_safetensors());
  write(root / "safetensors" / "meta.safetensors", meta.serialize_safetensors());
  {
    const std::string header =
        R"({"__metadata__": {"format": "pt"}, "b\u00e9": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]}, )"
        R"("a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})";
    std::vector<unsigned char> f(8 + header.size() + 12, 1);
    put_le64(f.data(), header.size());
    std::memcpy(f.data() + 8, header.data(), header.size());
    write(root / "safetensors" / "python_style.safetensors", f);
  }
  queue_seed<bfloat16>(root / "safetensors" / "bf16_queue.safetensors", 3, 2, true, 4, file_format::safetensors);
  // Sort-of-CLEVR dataset files: state only, and one image with pixels
  for (const bool pixels : {false, true}) {
    vqa::generator_params p;
    p.seed = 7, p.images = pixels ? 1 : 2, p.with_pixels = pixels;
    const fs::path path = root / "sort_of_clevr_dataset" / (pixels ? "one_image_pixels.bin" : "two_images.bin");
    fs::create_directories(path.parent_path());
    vqa::write_dataset(path, vqa::generate_dataset(p));
    std::printf("%s\n", path.c_str());
  }
  return 0;
}

// DLPack interop (interop/dlpack.hpp): DLTensors built by hand as an engine would export them,
// checked against the elements they describe, every refusal, the round trip back to DLPack, and
// a primitive called on DLPack views against the double reference.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "distill/interop/dlpack.hpp"
#include "distill/losses/kl_teacher_student.hpp"
#include "reference/soft_target_ref.hpp"
#include "support/compare.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

/// A DLTensor over `data` with the given shape and strides (empty strides: NULL, compact).
template <class T>
DLTensor make_dl(T* data, std::vector<std::int64_t>& shape, std::vector<std::int64_t>* strides = nullptr,
                 DLDeviceType device = kDLCPU, std::uint64_t byte_offset = 0) {
  DLTensor t{};
  t.data = data;
  t.device = {device, 0};
  t.ndim = static_cast<int>(shape.size());
  t.dtype = dlpack_dtype<T>();
  t.shape = shape.data();
  t.strides = strides ? strides->data() : nullptr;
  t.byte_offset = byte_offset;
  return t;
}

}  // namespace

TEST_CASE("from_dlpack views compact and strided tensors without a copy", "[core][dlpack]") {
  std::vector<float> buf(3 * 5);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);

  SECTION("NULL strides are compact row-major") {
    std::vector<std::int64_t> shape{3, 5};
    const DLTensor t = make_dl(buf.data(), shape);
    host_view<const float, 2> v;
    REQUIRE(from_dlpack(&t, v, "x").ok());
    CHECK(v.data() == buf.data());
    CHECK((v.extent(0) == 3 && v.extent(1) == 5 && v.stride(0) == 5 && v.stride(1) == 1));
    CHECK(v(2, 4) == 14.0f);
  }
  SECTION("explicit strides and byte_offset: the transpose of a 3x5 block from element 1") {
    std::vector<std::int64_t> shape{4, 3}, strides{1, 5};  // columns 1..4 of the 3x5 matrix, transposed
    const DLTensor t = make_dl(buf.data(), shape, &strides, kDLCPU, sizeof(float));
    host_view<float, 2> v;
    REQUIRE(from_dlpack(&t, v, "x").ok());
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 3; ++j) CHECK(v(i, j) == buf[static_cast<std::size_t>(j * 5 + i + 1)]);
  }
  SECTION("pinned host memory is host memory; CUDA memory is a cuda_view") {
    std::vector<std::int64_t> shape{15};
    DLTensor t = make_dl(buf.data(), shape, nullptr, kDLCUDAHost);
    host_view<float, 1> h;
    CHECK(from_dlpack(&t, h, "x").ok());
    t.device.device_type = kDLCUDA;
    cuda_view<float, 1> d;
    REQUIRE(from_dlpack(&t, d, "x").ok());
    CHECK(d.data() == buf.data());
    t.device.device_type = kDLCUDAManaged;
    CHECK(from_dlpack(&t, d, "x").ok());
  }
  SECTION("a null DLTensor pointer is an absent view; an empty tensor may have no data") {
    host_view<const float, 2> v = make_view(static_cast<const float*>(buf.data()), 3, 5);
    REQUIRE(from_dlpack(static_cast<const DLTensor*>(nullptr), v, "x").ok());
    CHECK(v.empty());
    std::vector<std::int64_t> shape{0, 5};
    const DLTensor t = make_dl(static_cast<float*>(nullptr), shape);
    REQUIRE(from_dlpack(&t, v, "x").ok());
    CHECK((v.size() == 0 && v.extent(1) == 5));
  }
}

TEST_CASE("from_dlpack maps every element type distill takes", "[core][dlpack]") {
  std::vector<std::int64_t> shape{2};
  std::int64_t i64[2] = {1, -2};
  std::int32_t i32[2] = {3, 4};
  std::uint8_t u8[2] = {0, 1};
  float16 f16[2] = {float16(0.5f), float16(-1.0f)};
  bfloat16 bf16[2] = {bfloat16(2.0f), bfloat16(-4.0f)};
  double f64[2] = {1.5, 2.5};
  host_view<const std::int64_t, 1> v64;
  host_view<const std::int32_t, 1> v32;
  host_view<const std::uint8_t, 1> vu8;
  host_view<const float16, 1> vf16;
  host_view<const bfloat16, 1> vbf16;
  host_view<const double, 1> vf64;
  auto t64 = make_dl(i64, shape);
  auto t32 = make_dl(i32, shape);
  auto tu8 = make_dl(u8, shape);
  auto tf16 = make_dl(f16, shape);
  auto tbf16 = make_dl(bf16, shape);
  auto tf64 = make_dl(f64, shape);
  REQUIRE(from_dlpack(&t64, v64, "a").ok());
  REQUIRE(from_dlpack(&t32, v32, "a").ok());
  REQUIRE(from_dlpack(&tu8, vu8, "a").ok());
  REQUIRE(from_dlpack(&tf16, vf16, "a").ok());
  REQUIRE(from_dlpack(&tbf16, vbf16, "a").ok());
  REQUIRE(from_dlpack(&tf64, vf64, "a").ok());
  CHECK(v64(1) == -2);
  CHECK(v32(1) == 4);
  CHECK(vu8(1) == 1);
  CHECK(static_cast<float>(vf16(0)) == 0.5f);
  CHECK(static_cast<float>(vbf16(1)) == -4.0f);
  CHECK(vf64(1) == 2.5);
  // the standard codes, not distill's own: an engine's bfloat16 is kDLBfloat, 16 bits
  CHECK((tbf16.dtype.code == kDLBfloat && tbf16.dtype.bits == 16 && tf16.dtype.code == kDLFloat));
  // labels arrive as int32 or int64 alike
  label_view<host_space> labels = v32;
  CHECK(labels(0) == 3);
}

TEST_CASE("from_dlpack refuses what a view cannot hold and names the argument", "[core][dlpack]") {
  std::vector<float> buf(16);
  std::vector<std::int64_t> shape{2, 4};
  auto expect = [](const status& st, errc code, const char* text) {
    INFO(st.to_string());
    CHECK(st.code() == code);
    CHECK(st.message().find("'teacher'") != std::string::npos);
    CHECK(st.message().find(text) != std::string::npos);
  };
  host_view<const float, 2> v;
  {
    auto t = make_dl(buf.data(), shape);
    t.dtype = {kDLFloat, 64, 1};
    expect(from_dlpack(&t, v, "teacher", "kd_loss"), errc::unsupported_dtype, "float64");
    CHECK(from_dlpack(&t, v, "teacher", "kd_loss").message().rfind("kd_loss: ", 0) == 0);
    t.dtype = {kDLFloat, 32, 4};  // vector lanes
    expect(from_dlpack(&t, v, "teacher"), errc::unsupported_dtype, "4 lanes");
  }
  {
    std::vector<std::int64_t> shape3{2, 2, 2};
    auto t = make_dl(buf.data(), shape3);
    expect(from_dlpack(&t, v, "teacher"), errc::shape_mismatch, "3 dimensions");
  }
  {
    auto t = make_dl(buf.data(), shape, nullptr, kDLCUDA);
    expect(from_dlpack(&t, v, "teacher"), errc::wrong_memory_space, "CUDA");
    cuda_view<const float, 2> d;
    t.device.device_type = kDLCPU;
    CHECK(from_dlpack(&t, d, "teacher").code() == errc::wrong_memory_space);
    t.device.device_type = kDLROCM;
    CHECK(from_dlpack(&t, d, "teacher").code() == errc::wrong_memory_space);
  }
  {
    std::vector<std::int64_t> strides{-4, 1};
    auto t = make_dl(buf.data() + 4, shape, &strides);
    expect(from_dlpack(&t, v, "teacher"), errc::unsupported_layout, "negative stride");
  }
  {
    auto t = make_dl(buf.data(), shape, nullptr, kDLCPU, 2);  // half a float in
    expect(from_dlpack(&t, v, "teacher"), errc::misaligned, "aligned");
  }
  {
    auto t = make_dl(static_cast<float*>(nullptr), shape);
    expect(from_dlpack(&t, v, "teacher"), errc::invalid_argument, "null data");
  }
  {
    std::vector<std::int64_t> bad{2, -1};
    auto t = make_dl(buf.data(), bad);
    expect(from_dlpack(&t, v, "teacher"), errc::shape_mismatch, "negative extent");
  }
  CHECK(v.empty());  // a refused tensor leaves the view absent
}

TEST_CASE("to_dlpack exports a view that from_dlpack reads back, and releases once", "[core][dlpack]") {
  std::vector<double> buf(4 * 7, 0.0);
  auto view = make_strided_view(buf.data(), std::array<index_t, 2>{4, 5}, std::array<index_t, 2>{7, 1});  // padded rows
  int released = 0;
  DLManagedTensor* m = to_dlpack(view, 0, [&released] { ++released; });
  CHECK((m->dl_tensor.device.device_type == kDLCPU && m->dl_tensor.ndim == 2));
  CHECK((m->dl_tensor.shape[1] == 5 && m->dl_tensor.strides[0] == 7));
  host_view<double, 2> back;
  REQUIRE(from_dlpack(&m->dl_tensor, back, "exported").ok());
  CHECK((back.data() == view.data() && back.stride(0) == 7 && back.extent(0) == 4));
  back(3, 4) = 9.0;
  CHECK(buf[3 * 7 + 4] == 9.0);
  CHECK(released == 0);
  m->deleter(m);
  CHECK(released == 1);

  cuda_view<const float, 1> device_view(reinterpret_cast<const float*>(std::uintptr_t{256}), {8}, {1});
  DLManagedTensor* d = to_dlpack(device_view, 3);
  CHECK((d->dl_tensor.device.device_type == kDLCUDA && d->dl_tensor.device.device_id == 3));
  d->deleter(d);  // the default release does nothing
}

TEST_CASE("a primitive on DLPack views of a column-major buffer matches the double reference", "[core][dlpack]") {
  // An engine with column-major logits (Fortran order, e.g. NumPy's .T) exports strides (1, N).
  distill_test::rng g(21);
  const std::int64_t N = 7, C = 11;
  auto zs = g.normals<double>(static_cast<std::size_t>(N * C), 0, 3);
  auto zt = g.normals<double>(static_cast<std::size_t>(N * C), 0, 3);
  for (auto* z : {&zs, &zt})
    for (double& v : *z) v = static_cast<float>(v);  // the reference sees the float inputs
  std::vector<float> s_cm(static_cast<std::size_t>(N * C)), t_cm(s_cm.size()), grad(s_cm.size());
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t k = 0; k < C; ++k) {
      s_cm[static_cast<std::size_t>(k * N + r)] = static_cast<float>(zs[static_cast<std::size_t>(r * C + k)]);
      t_cm[static_cast<std::size_t>(k * N + r)] = static_cast<float>(zt[static_cast<std::size_t>(r * C + k)]);
    }
  std::vector<std::int64_t> shape{N, C}, strides{1, N}, grad_shape{N, C}, loss_shape{1};
  const DLTensor ds = make_dl(s_cm.data(), shape, &strides), dt = make_dl(t_cm.data(), shape, &strides);
  float loss = 0;
  const DLTensor dg = make_dl(grad.data(), grad_shape), dl = make_dl(&loss, loss_shape);
  host_view<const float, 2> s, t;
  host_view<float, 2> gv;
  host_view<float, 1> lv;
  REQUIRE(from_dlpack(&ds, s, "student").ok());
  REQUIRE(from_dlpack(&dt, t, "teacher").ok());
  REQUIRE(from_dlpack(&dg, gv, "grad").ok());
  REQUIRE(from_dlpack(&dl, lv, "loss").ok());
  soft_target_options opt;
  opt.temperature = 2.0f;
  REQUIRE(kl_teacher_student_forward_backward(cpu{2}, s, t, lv, gv, {}, {}, opt).ok());

  soft_target_ref::config cf;
  cf.temperature = 2.0;
  soft_target_ref::batch b;
  b.n = N, b.c = C, b.zs = zs, b.zt = zt;
  const auto ref = soft_target_ref::evaluate(cf, b);
  CHECK_CLOSE_SCALAR("loss", loss, ref.loss[0], distill_test::tol::f32);
  CHECK_CLOSE("grad", grad, std::vector<double>(ref.grad.begin(), ref.grad.end()), distill_test::tol::f32);
}

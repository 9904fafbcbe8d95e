// Masks are made on the fly, so solving must not allocate: this binary replaces the global
// operator new with a counting one and checks that 600 Sort-of-CLEVR masks (every question type,
// fresh scenes) and 100 generic solves allocate nothing after prepare().
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "../../examples/vqa_spatial_kd/src/logic_masks.hpp"
#include "support/random.hpp"

// GCC cannot see that operator new below pairs malloc with free.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<long> allocations{0};
}

// Every replaceable form that pairs with free() is replaced, the nothrow ones included (Catch2
// uses them): a form left to the runtime would allocate with its own allocator and be freed
// here, which AddressSanitizer reports as an alloc-dealloc mismatch. The aligned forms are left
// alone as a set (they allocate and free with the runtime's).
namespace {
void* counted_malloc(std::size_t n) noexcept {
  allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

using namespace distill;
using namespace vqa;

TEST_CASE("logic: solving allocates nothing after prepare", "[logic][performance]") {
  const std::string dir =
      (std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "examples" / "vqa_spatial_kd" / "rules").string();
  sort_of_clevr_rules rules;
  REQUIRE(load_sort_of_clevr_rules(dir, rules).ok());
  sort_of_clevr_masker masker;
  REQUIRE(masker.prepare(rules).ok());
  rule_set generic;
  REQUIRE(parse_rules("observed q/1.\nopen rel/2, s/1.\n3: q(I) & near(I, J) -> rel(I, J) ^2\n2: rel(I, J) -> s(J)\n"
                      "1: !rel(I, J) ^2\n1: !s(I) ^2\nrel(I, J) -> rel(J, I) .\n",
                      generic)
              .ok());
  logic_solver solver;
  REQUIRE(solver.prepare(generic, 8).ok());

  distill_test::rng g(501);
  std::vector<scene_object> scene(8);
  std::vector<float> mask(64), q(8);
  const logic_options sorted_opt = sort_of_clevr_logic_options();
  logic_options generic_opt;
  generic_opt.spatial.near_radius = 0.4;
  const int q_id = generic.find_predicate("q"), rel_id = generic.find_predicate("rel");

  const long before = allocations.load();
  bool all_ok = true;
  for (int k = 0; k < 600; ++k) {
    for (int i = 0; i < 6; ++i)
      scene[static_cast<std::size_t>(i)] = {static_cast<float>(g.uniform(5, 70)), static_cast<float>(g.uniform(5, 70)), i,
                                            static_cast<std::int32_t>(g.integer(0, 1)), 0, 0};
    all_ok = all_ok && masker.mask(make_view(static_cast<const scene_object*>(scene.data()), 6), k % 6,
                                   static_cast<sort_of_clevr_question>(k % 6), make_view(mask.data(), 6, 6), sorted_opt)
                           .ok();
  }
  for (int k = 0; k < 100; ++k) {
    const int n = 1 + k % 8;
    for (int i = 0; i < n; ++i) {
      scene[static_cast<std::size_t>(i)] = {static_cast<float>(g.uniform()), static_cast<float>(g.uniform()), i, 0, 0, 0};
      q[static_cast<std::size_t>(i)] = static_cast<float>(g.uniform());
    }
    const observed_values obs[] = {{q_id, make_view(static_cast<const float*>(q.data()), n)}};
    all_ok = all_ok && logic_mask(cpu{1}, solver, make_view(static_cast<const scene_object*>(scene.data()), n), obs, rel_id,
                                  make_view(mask.data(), n, n), generic_opt)
                           .ok();
  }
  const long during = allocations.load() - before;
  CHECK(all_ok);
  CHECK(during == 0);
  // The counter does count (a direct call to operator new cannot be optimised away).
  void* p = ::operator new(16);
  ::operator delete(p);
  CHECK(allocations.load() > before + during);
}

// distill::cpu with an engine's own executor: a small std::thread pool (no OpenMP) runs the same
// chunks as the default OpenMP path, so every result is bitwise the same as there, and a loop
// nested in a chunk runs serially instead of waiting on the pool.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "distill/core/cpu_gemm.hpp"
#include "distill/core/parallel.hpp"
#include "distill/nn/cross_entropy.hpp"
#include "reference/nn_ref.hpp"
#include "support/random.hpp"

using namespace distill;

namespace {

/// A fixed set of worker threads that take chunks from a shared counter; the calling thread
/// only waits. Records which threads ran chunks.
class thread_pool {
 public:
  explicit thread_pool(int workers) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
  }
  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  cpu_executor executor() { return {&thread_pool::run, this}; }
  int calls() const { return calls_; }
  std::set<std::thread::id> chunk_threads() {
    std::lock_guard lock(mutex_);
    return ran_on_;
  }

 private:
  static void run(void* self, index_t chunks, cpu_task task) { static_cast<thread_pool*>(self)->run_all(chunks, task); }
  void run_all(index_t chunks, const cpu_task& task) {
    std::unique_lock lock(mutex_);
    ++calls_;
    task_ = &task, chunks_ = chunks, next_ = 0, done_ = 0;
    wake_.notify_all();
    finished_.wait(lock, [&] { return done_ == chunks_; });
    task_ = nullptr;
  }
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (task_ != nullptr && next_ < chunks_); });
      if (stop_) return;
      const index_t chunk = next_++;
      const cpu_task* task = task_;
      ran_on_.insert(std::this_thread::get_id());
      lock.unlock();
      (*task)(chunk);
      lock.lock();
      if (++done_ == chunks_) finished_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::vector<std::thread> threads_;
  const cpu_task* task_ = nullptr;
  index_t chunks_ = 0, next_ = 0, done_ = 0;
  int calls_ = 0;
  bool stop_ = false;
  std::set<std::thread::id> ran_on_;
};

/// The chunks one after the other, in reverse order, on the calling thread.
cpu_executor reversed_serial() {
  return {[](void*, index_t chunks, cpu_task task) {
            for (index_t i = chunks - 1; i >= 0; --i) task(i);
          },
          nullptr};
}

}  // namespace

TEST_CASE("cpu executor: a std::thread pool runs every chunk once, sums equal the OpenMP path bit for bit", "[core][parallel][executor]") {
  thread_pool pool(3);
  distill_test::rng gen(61);
  const auto values = gen.normals<float>(100003, 0.0, 1e3);  // float sums depend on the grouping
  for (int threads : {1, 2, 3, 5, 8}) {
    const cpu omp{threads}, pooled{threads, pool.executor()}, serial{threads, reversed_serial()};
    for (index_t n : {index_t(0), index_t(1), index_t(7), index_t(100003)}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      parallel_for(pooled, n, [&](index_t b, index_t e) {
        for (index_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
      });
      CHECK(std::all_of(hits.begin(), hits.end(), [](const std::atomic<int>& h) { return h == 1; }));
      const auto sum = [&](const cpu& ctx) {
        return parallel_sum<float>(ctx, n, [&](index_t b, index_t e) {
          float s = 0;
          for (index_t i = b; i < e; ++i) s += values[static_cast<std::size_t>(i)];
          return s;
        });
      };
      const float s_omp = sum(omp), s_pool = sum(pooled), s_serial = sum(serial);
      CHECK(s_pool == s_omp);
      CHECK(s_serial == s_omp);
      double exact = 0, magnitude = 0;  // independent reference: the double-precision sum
      for (index_t i = 0; i < n; ++i) exact += values[static_cast<std::size_t>(i)], magnitude += std::abs(values[static_cast<std::size_t>(i)]);
      CHECK(std::abs(double(s_pool) - exact) <= 1e-5 * magnitude);
    }
  }
  CHECK(pool.calls() > 0);
  const auto ran_on = pool.chunk_threads();
  CHECK(!ran_on.empty());
  CHECK(ran_on.count(std::this_thread::get_id()) == 0);  // the chunks ran on the pool's threads
}

TEST_CASE("cpu executor: a loop nested in a chunk runs serially on the chunk's thread", "[core][parallel][executor]") {
  thread_pool pool(2);
  const cpu ctx{4, pool.executor()};
  CHECK(parallel_threads(ctx, 1000) == 4);
  std::vector<int> inner_threads(4, 0);
  std::vector<long long> inner_sums(4, 0);
  parallel_for(ctx, 4, [&](index_t b, index_t e) {
    for (index_t c = b; c < e; ++c) {
      inner_threads[static_cast<std::size_t>(c)] = parallel_threads(ctx, 1000);
      inner_sums[static_cast<std::size_t>(c)] = parallel_sum<long long>(ctx, 1000, [](index_t i0, index_t i1) {
        long long s = 0;
        for (index_t i = i0; i < i1; ++i) s += i;
        return s;
      });
    }
  });
  CHECK(inner_threads == std::vector<int>(4, 1));
  CHECK(inner_sums == std::vector<long long>(4, 499500));
  CHECK(parallel_threads(ctx, 1000) == 4);  // the mark is cleared once the chunk returns
}

TEST_CASE("cpu executor: gemm and cross-entropy on a std::thread pool equal the OpenMP path bit for bit", "[core][parallel][executor]") {
  thread_pool pool(3);
  distill_test::rng gen(62);
  const index_t M = 190, N = 150, K = 70;  // M N K >= 2^18: the product is split into row blocks
  const auto a = gen.normals<float>(static_cast<std::size_t>(M * K)), b = gen.normals<float>(static_cast<std::size_t>(K * N));
  std::vector<double> ref(static_cast<std::size_t>(M * N), 0.0);  // naive double-precision product
  for (index_t i = 0; i < M; ++i)
    for (index_t k = 0; k < K; ++k)
      for (index_t j = 0; j < N; ++j)
        ref[static_cast<std::size_t>(i * N + j)] += double(a[static_cast<std::size_t>(i * K + k)]) * double(b[static_cast<std::size_t>(k * N + j)]);
  // cross-entropy: a parallel_sum over rows (chunks of at least 4096 / cols rows)
  const index_t rows = 512, cols = 100;
  const auto z = gen.normals<float>(static_cast<std::size_t>(rows * cols), 0, 3);
  std::vector<std::int32_t> y(static_cast<std::size_t>(rows));
  for (auto& label : y) label = static_cast<std::int32_t>(gen.integer(0, cols - 1));
  const distill_ref::nn::vec z_ref(z.begin(), z.end());
  const double expected = distill_ref::nn::cross_entropy(z_ref, std::vector<long>(y.begin(), y.end()), rows, cols, 0.0, -100, 2)[0];
  for (int threads : {2, 3}) {
    const cpu omp{threads}, pooled{threads, pool.executor()};
    for (bool with_workspace : {false, true}) {
      std::vector<std::byte> ws(with_workspace ? gemm_workspace_size<float>(omp, M, N, K) : 0);
      const auto wsv = with_workspace ? make_view(ws.data(), static_cast<index_t>(ws.size())) : host_view<std::byte, 1>{};
      std::vector<float> c_omp(static_cast<std::size_t>(M * N)), c_pool(c_omp.size());
      REQUIRE(gemm(omp, transpose::no, transpose::no, 1.0f, make_view(a.data(), M, K), make_view(b.data(), K, N), 0.0f,
                   make_view(c_omp.data(), M, N), wsv).ok());
      REQUIRE(gemm(pooled, transpose::no, transpose::no, 1.0f, make_view(a.data(), M, K), make_view(b.data(), K, N), 0.0f,
                   make_view(c_pool.data(), M, N), wsv).ok());
      CHECK(c_pool == c_omp);
      double worst = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(double(c_pool[i]) - ref[i]));
      CHECK(worst < 1e-3);
    }
    float loss_omp = 0, loss_pool = 0;
    std::vector<float> g_omp(z.size()), g_pool(z.size());
    REQUIRE(nn::softmax_cross_entropy_forward_backward(omp, make_view(z.data(), rows, cols), make_view(y.data(), rows),
                                                       make_view(&loss_omp, 1), make_view(g_omp.data(), rows, cols)).ok());
    REQUIRE(nn::softmax_cross_entropy_forward_backward(pooled, make_view(z.data(), rows, cols), make_view(y.data(), rows),
                                                       make_view(&loss_pool, 1), make_view(g_pool.data(), rows, cols)).ok());
    CHECK(loss_pool == loss_omp);
    CHECK(g_pool == g_omp);
    CHECK(loss_pool == Approx(expected).epsilon(1e-5));
  }
}

TEST_CASE("cpu context: the default uses every hardware thread", "[core][parallel]") {
  CHECK(cpu{}.threads == hardware_threads());
  CHECK(hardware_threads() >= 1);
  CHECK(cpu{}.executor.run == nullptr);
}

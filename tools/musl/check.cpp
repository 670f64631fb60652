// tools/musl/check.cpp — `make size` runs this beside the aarch64-musl MLP
// program: the parts of libstdc++ nn uses, on musl through
// glibcxx_on_musl.{h,c}, behave. Exits non-zero with a message otherwise.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

int main() {
    // A thread runs and is joined; its result is seen.
    int from_thread = 0;
    std::thread t([&] { from_thread = 42; });
    t.join();
    if (from_thread != 42) return std::printf("check: thread result %d, expected 42\n", from_thread), 1;

    // A timed wait on the steady clock (pthread_cond_clockwait with
    // CLOCK_MONOTONIC) times out after its delay, not at once or never.
    std::mutex m;
    std::condition_variable cv;
    std::unique_lock<std::mutex> lock(m);
    const auto t0 = std::chrono::steady_clock::now();
    const bool woken = cv.wait_for(lock, std::chrono::milliseconds(30)) == std::cv_status::no_timeout;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (woken || ms < 29.0 || ms > 5000.0) return std::printf("check: 30 ms wait took %.1f ms\n", ms), 1;

    // A notified wait returns before its deadline.
    bool ready = false;
    std::thread notifier([&] {
        std::lock_guard<std::mutex> g(m);
        ready = true;
        cv.notify_one();
    });
    const bool got = cv.wait_for(lock, std::chrono::seconds(10), [&] { return ready; });
    lock.unlock();
    notifier.join();
    if (!got) return std::printf("check: notified wait timed out\n"), 1;

    // Containers and strings allocate and grow.
    std::vector<std::string> v;
    for (int i = 0; i < 100; ++i) v.push_back("row " + std::to_string(i));
    if (v[99] != "row 99") return std::printf("check: vector of strings holds '%s'\n", v[99].c_str()), 1;
    std::printf("check: threads, timed waits and containers work (30 ms wait: %.1f ms)\n", ms);
    return 0;
}

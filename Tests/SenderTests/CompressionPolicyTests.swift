import ShipProtocol
import Testing

@testable import Sender

@Suite struct CompressionPolicyTests {
    static let mib = 1 << 20
    let start = ContinuousClock.now

    /// A policy that has timed both efforts on two frames still waiting for the socket: fast at 1600 MB/s,
    /// high at 350 MB/s (as measured here on pgbench WAL).
    func measured(_ mode: CompressionPolicy.Mode = .auto) -> CompressionPolicy {
        var policy = CompressionPolicy(mode: mode)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .microseconds(655), effort: .fast)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .microseconds(2996), effort: .high)
        return policy
    }

    /// The socket takes `frames` frames of 1 MiB, each written long before, in bursts of `burst` every `every`;
    /// returns when it took the last one.
    func link(
        _ policy: inout CompressionPolicy, frames: Int, burst: Int, every: Duration,
        from: ContinuousClock.Instant? = nil
    ) -> ContinuousClock.Instant {
        var now = from ?? start
        for i in 0..<frames {
            if i % burst == 0 { now += every }
            policy.frameWritten(walBytes: Self.mib, compressedIn: .microseconds(655), effort: .fast)
            policy.frameTaken(walBytes: Self.mib, writtenAt: start, now: now)
        }
        return now
    }

    @Test func aSlowLinkWithFramesQueuedGetsHighEffort() {
        var policy = measured()
        // 100 Mbit/s at 0.125 wire bytes per WAL byte: the socket takes four 1 MiB frames every 336 ms.
        let now = link(&policy, frames: 12, burst: 4, every: .milliseconds(336))
        let rate = policy.linkRate ?? 0
        #expect(rate > 11e6 && rate < 14e6, "\(rate)")
        #expect(policy.outstanding == 2)
        #expect(policy.effort(now: now + .milliseconds(10)) == .high)
        // Once the socket has taken every frame the stream keeps up, and a commit's frame must not wait for LZ4HC.
        policy.frameTaken(walBytes: Self.mib, writtenAt: start, now: now)
        policy.frameTaken(walBytes: Self.mib, writtenAt: start, now: now)
        #expect(policy.effort(now: now + .milliseconds(10)) == .fast)
    }

    @Test func burstsAloneMeasureNothing() {
        var policy = measured()
        // Many frames taken in one instant (one write of several): no time passed, so no rate.
        let now = link(&policy, frames: 8, burst: 8, every: .milliseconds(1))
        #expect(policy.linkRate == nil)
        #expect(policy.effort(now: now) == .fast)
    }

    @Test func aFrameTheLinkWasIdleForStartsAFreshStretch() {
        var policy = measured()
        var now = link(&policy, frames: 2, burst: 1, every: .milliseconds(100))
        // Written after the socket took the one ahead: the link may have idled, so the stretch restarts.
        now += .milliseconds(200)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .microseconds(655), effort: .fast)
        policy.frameTaken(walBytes: Self.mib, writtenAt: now - .milliseconds(150), now: now)
        #expect(policy.linkRate == nil)
        _ = link(&policy, frames: 3, burst: 1, every: .milliseconds(100), from: now)
        #expect(policy.linkRate.map { abs($0 - 3 * Double(Self.mib) / 0.3) < 1 } == true)
    }

    @Test func aLinkFasterThanHighEffortWithMarginStaysFast() {
        var policy = measured()
        // Loopback: 500 MB/s, more than a third of LZ4HC's 350 MB/s.
        var now = link(&policy, frames: 240, burst: 2, every: .microseconds(4194))
        #expect(policy.effort(now: now) == .fast)
        // 150 MB/s is still too fast for a margin of three.
        policy = measured()
        now = link(&policy, frames: 80, burst: 2, every: .microseconds(13_981))
        #expect(policy.effort(now: now) == .fast)
    }

    @Test func anOldLinkRateSaysNothing() {
        var policy = measured()
        let now = link(&policy, frames: 12, burst: 4, every: .milliseconds(336))
        #expect(policy.effort(now: now + .seconds(3)) == .fast)
        // A fresh sample after a pause replaces the old rate instead of averaging with it.
        policy.linkCarried(walBytes: Self.mib, in: .milliseconds(2), at: now + .seconds(10))
        #expect(policy.linkRate == Double(Self.mib) / 0.002)
    }

    @Test func untimedHighEffortIsAssumedFiveTimesSlowerThanFast() {
        var policy = CompressionPolicy(mode: .auto)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .microseconds(655), effort: .fast)
        policy.linkCarried(walBytes: Self.mib, in: .milliseconds(84), at: start)
        #expect(policy.effort(now: start) == .high)
        // Timed high effort that turns out too slow for this link wins over the assumption.
        policy.linkCarried(walBytes: Self.mib, in: .milliseconds(20), at: start)
        for _ in 0..<20 { policy.frameWritten(walBytes: Self.mib, compressedIn: .milliseconds(30), effort: .high) }
        #expect(policy.effort(now: start) == .fast)
    }

    @Test func noTimingsNoHighEffort() {
        var policy = CompressionPolicy(mode: .auto)
        policy.frameWritten(walBytes: 4096, compressedIn: .microseconds(50), effort: .fast)
        policy.linkCarried(walBytes: Self.mib, in: .milliseconds(84), at: start)
        // A commit-sized frame teaches nothing of throughput, and neither does a zero duration.
        #expect(policy.fastRate == nil)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .zero, effort: .fast)
        #expect(policy.fastRate == nil)
        #expect(policy.effort(now: start) == .fast)
        policy.linkCarried(walBytes: 4096, in: .milliseconds(300), at: start)
        #expect(policy.linkRate == Double(Self.mib) / 0.084)
    }

    @Test func ratesAreMovingAverages() {
        var policy = CompressionPolicy(mode: .auto)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .milliseconds(1), effort: .fast)
        policy.frameWritten(walBytes: Self.mib, compressedIn: .milliseconds(2), effort: .fast)
        let first = Double(Self.mib) / 0.001
        #expect(abs(policy.fastRate! - (first + 0.25 * (first / 2 - first))) < 1)
    }

    @Test func fixedModesIgnoreTheLink() {
        var fast = measured(.fast)
        let now = link(&fast, frames: 12, burst: 4, every: .milliseconds(336))
        #expect(fast.effort(now: now) == .fast)
        let high = CompressionPolicy(mode: .high)
        #expect(high.effort(now: start) == .high)
    }
}

import LZ4Codec
import ShipProtocol
import StatusModel
import Synchronization

/// Chooses how hard each WAL frame is compressed. Fast LZ4 outruns any network; LZ4HC puts about 15 % fewer
/// bytes on the wire at about a quarter of the speed. When the link carries fewer bytes per second than the
/// sender could hand it, fewer bytes per WAL byte means more WAL per second: high effort pays while frames
/// queue behind a link whose rate, in WAL bytes per second, high compression outruns with a margin. Then the
/// link stays the bottleneck and the CPU spent is time the sender would have waited anyway. On a fast link,
/// or while the stream keeps up with the primary, every frame is fast: a synchronous commit waits on it.
///
/// The rates are learnt from the frames themselves, so the choice follows the machine and the link as they
/// are, not a configured bandwidth. Only frames of at least `minimumSampleBytes` teach anything: a commit's
/// few kilobytes measure call overhead and scheduling, not throughput.
public struct CompressionPolicy: Sendable {
    public enum Mode: String, Sendable, CaseIterable, CustomStringConvertible {
        /// High effort while a slow link is the bottleneck, fast otherwise.
        case auto
        case fast
        case high
        public var description: String { rawValue }
    }

    public let mode: Mode
    /// WAL bytes per second each effort compresses on this machine (moving averages).
    public private(set) var fastRate: Double?
    public private(set) var highRate: Double?
    /// WAL bytes per second the link carried while frames waited behind each other.
    public private(set) var linkRate: Double?
    private var linkMeasuredAt: ContinuousClock.Instant?
    /// WAL frames written to the link and not yet taken by its socket.
    public private(set) var outstanding = 0
    /// When the socket last took a frame.
    private var lastTaken: ContinuousClock.Instant?
    /// The link's current busy stretch: since when, and the WAL its frames carried.
    private var busy: (since: ContinuousClock.Instant, walBytes: Int)?

    /// High effort only where it outruns the link by this factor.
    static let margin = 3.0
    /// A link rate older than this says nothing about the link now (the backlog ended, or the link changed).
    static let linkRateLifetime: Duration = .seconds(2)
    /// The link's rate is taken over busy stretches at least this long: the socket takes queued frames in
    /// bursts (one write of several, or whenever it has room), so one frame's wait says nothing.
    static let linkSampleTime: Duration = .milliseconds(250)
    /// Until high effort has been timed here, it is taken to be this many times slower than fast.
    static let assumedHighSlowdown = 5.0
    /// The newest sample's weight in the moving averages.
    static let smoothing = 0.25
    public static let minimumSampleBytes = 64 << 10

    public init(mode: Mode) { self.mode = mode }

    /// The effort for the next frame: high only while earlier frames still wait for a slow link.
    public func effort(now: ContinuousClock.Instant) -> CompressionEffort {
        switch mode {
        case .fast: return .fast
        case .high: return .high
        case .auto:
            guard outstanding > 0, let link = linkRate, let at = linkMeasuredAt, now - at <= Self.linkRateLifetime,
                let high = highRate ?? fastRate.map({ $0 / Self.assumedHighSlowdown })
            else { return .fast }
            return high >= link * Self.margin ? .high : .fast
        }
    }

    /// A frame of `walBytes` was compressed with `effort` in `duration` and written to the link.
    public mutating func frameWritten(walBytes: Int, compressedIn duration: Duration, effort: CompressionEffort) {
        outstanding += 1
        guard let rate = Self.rate(walBytes, duration) else { return }
        switch effort {
        case .fast: fastRate = Self.average(fastRate, rate)
        case .high: highRate = Self.average(highRate, rate)
        }
    }

    /// The socket took a frame of `walBytes` written at `writtenAt`. If it was written before the socket took
    /// the frame ahead of it, it waited behind that one, and the link has been busy all the while.
    public mutating func frameTaken(walBytes: Int, writtenAt: ContinuousClock.Instant, now: ContinuousClock.Instant) {
        outstanding -= 1
        defer { lastTaken = now }
        guard let last = lastTaken, writtenAt <= last, var stretch = busy else {
            busy = (now, 0)
            return
        }
        stretch.walBytes += walBytes
        if now - stretch.since >= Self.linkSampleTime {
            linkCarried(walBytes: stretch.walBytes, in: now - stretch.since, at: now)
            stretch = (now, 0)
        }
        busy = stretch
    }

    /// The link carried `walBytes` of WAL in `duration` of being busy.
    mutating func linkCarried(walBytes: Int, in duration: Duration, at now: ContinuousClock.Instant) {
        guard let rate = Self.rate(walBytes, duration) else { return }
        let fresh = linkMeasuredAt.map { now - $0 <= Self.linkRateLifetime } ?? false
        linkRate = fresh ? Self.average(linkRate, rate) : rate
        linkMeasuredAt = now
    }

    static func rate(_ bytes: Int, _ duration: Duration) -> Double? {
        let s = seconds(duration)
        guard bytes >= minimumSampleBytes, s > 0 else { return nil }
        return Double(bytes) / s
    }

    static func average(_ old: Double?, _ sample: Double) -> Double {
        old.map { $0 + smoothing * (sample - $0) } ?? sample
    }
}

/// A policy shared by the code that compresses frames and the event loop that sees the socket take them: each
/// frame is compressed at the effort the policy picks for it, timed, and reported when taken.
public final class SharedCompressionPolicy: Sendable {
    private let policy: Mutex<CompressionPolicy>

    public init(mode: CompressionPolicy.Mode) { policy = Mutex(CompressionPolicy(mode: mode)) }

    /// A frame of `walBytes` from `compress` at the effort chosen now; when it was written (for `taken`).
    public func compress<Frame>(
        walBytes: Int, _ compress: (CompressionEffort) -> Frame
    )
        -> (frame: Frame, effort: CompressionEffort, writtenAt: ContinuousClock.Instant)
    {
        let started = ContinuousClock.now
        let effort = policy.withLock { $0.effort(now: started) }
        let frame = compress(effort)
        let written = ContinuousClock.now
        policy.withLock { $0.frameWritten(walBytes: walBytes, compressedIn: written - started, effort: effort) }
        return (frame, effort, written)
    }

    /// The socket took the frame of `walBytes` written at `writtenAt`.
    public func taken(walBytes: Int, writtenAt: ContinuousClock.Instant) {
        policy.withLock { $0.frameTaken(walBytes: walBytes, writtenAt: writtenAt, now: .now) }
    }
}

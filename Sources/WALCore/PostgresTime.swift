#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// PostgreSQL's `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
public struct PostgresTimestamp: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: Int64
    public init(rawValue: Int64) { self.rawValue = rawValue }

    static let unixEpochOffsetMicros: Int64 = 946_684_800_000_000

    public init(unixMicroseconds: Int64) { self.rawValue = unixMicroseconds - Self.unixEpochOffsetMicros }
    public var unixMicroseconds: Int64 { rawValue + Self.unixEpochOffsetMicros }
    public var unixSeconds: Double { Double(unixMicroseconds) / 1_000_000 }

    /// The wall clock now, with microsecond precision.
    public static func now() -> PostgresTimestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return PostgresTimestamp(unixMicroseconds: Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Seconds from `earlier` to `self`, never negative (clocks of two hosts can disagree slightly).
    public func seconds(since earlier: PostgresTimestamp) -> Double {
        max(0, Double(rawValue - earlier.rawValue) / 1_000_000)
    }
}

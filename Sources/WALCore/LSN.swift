/// A position in the WAL stream (PostgreSQL's `XLogRecPtr`), printed as PostgreSQL does: `%X/%X`.
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }

    /// `InvalidXLogRecPtr`; PostgreSQL shows it as NULL in `pg_stat_replication`.
    public static let invalid = LSN(0)

    public var isValid: Bool { rawValue != 0 }

    /// Parses `X/X` (hex halves, as PostgreSQL prints and accepts them). Returns nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, (1...8).contains(parts[0].count), (1...8).contains(parts[1].count),
            let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16)
        else { return nil }
        self.rawValue = UInt64(high) << 32 | UInt64(low)
    }

    public var description: String {
        String(UInt32(truncatingIfNeeded: rawValue >> 32), radix: 16, uppercase: true) + "/"
            + String(UInt32(truncatingIfNeeded: rawValue), radix: 16, uppercase: true)
    }

    public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.rawValue < rhs.rawValue }

    public func advanced(by bytes: UInt64) -> LSN { LSN(rawValue + bytes) }

    /// Bytes from `other` up to `self`; zero when `other` is ahead (lag never goes negative).
    public func bytesAfter(_ other: LSN) -> UInt64 { rawValue > other.rawValue ? rawValue - other.rawValue : 0 }
}

public typealias TimeLineID = UInt32

import WALCore

/// WAL pages with valid headers for a 1 MiB segment size (small and fast, same rules as 16 MiB).
public enum TestWAL {
    public static let size = WALSegmentSize(bytes: 1 << 20)!
    public static let sysid: UInt64 = 7_711_355_351_252_201_643

    public static func segment(_ number: UInt64, count: Int = 1 << 20, systemIdentifier: UInt64 = sysid) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var seed = UInt32(truncatingIfNeeded: number &* 2_654_435_761 &+ 1)
        for i in 0..<count {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            bytes[i] = UInt8(truncatingIfNeeded: seed >> 24)
        }
        var page = 0
        while page < count {
            var h: [UInt8] = []
            func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { h.append(contentsOf: $0) } }
            le(UInt16(0xD110))
            le(UInt16(page == 0 ? 2 : 0))
            le(UInt32(1))
            le(size.startLSN(ofSegment: number).rawValue + UInt64(page))
            le(UInt64(0))
            if page == 0 {
                le(systemIdentifier)
                le(UInt32(size.bytes))
                le(UInt32(8192))
            }
            for (i, b) in h.enumerated() where page + i < count { bytes[page + i] = b }
            page += 8192
        }
        return bytes
    }
}

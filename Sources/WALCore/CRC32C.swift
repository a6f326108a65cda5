import CCRC32C

/// CRC-32C (Castagnoli), the checksum PostgreSQL uses for WAL records; here it guards ship frames and
/// spool journal records. The CPU's CRC-32C instruction when it has one; otherwise slicing-by-8 over one
/// flat table, eight bytes per step with one unaligned load.
public enum CRC32C {
    /// Whether `update` uses the CPU's instruction on this machine.
    public static let usesHardware: Bool = walship_crc32c_hw_available() == 1

    /// Eight 256-entry tables, one after another: entry `t * 256 + i`.
    private nonisolated(unsafe) static let table: UnsafePointer<UInt32> = {
        let t = UnsafeMutablePointer<UInt32>.allocate(capacity: 8 * 256)
        for i in 0..<256 {
            var crc = UInt32(i)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            t[i] = crc
        }
        for k in 1..<8 {
            for i in 0..<256 {
                let previous = t[(k - 1) * 256 + i]
                t[k * 256 + i] = (previous >> 8) ^ t[Int(previous & 0xFF)]
            }
        }
        return UnsafePointer(t)
    }()

    /// Continues a running checksum; start with `0`.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        if usesHardware { return ~walship_crc32c_hw_update(~crc, base, bytes.count) }
        return softwareUpdate(crc, base, bytes.count)
    }

    /// The table implementation; public to tests so both paths are checked against each other.
    public static func softwareUpdate(_ crc: UInt32, _ base: UnsafeRawPointer, _ count: Int) -> UInt32 {
        let t = table
        var c = ~crc
        var index = 0
        while count - index >= 8 {
            let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt64.self)) ^ UInt64(c)
            c =
                t[7 * 256 + Int(word & 0xFF)] ^ t[6 * 256 + Int((word >> 8) & 0xFF)]
                ^ t[5 * 256 + Int((word >> 16) & 0xFF)] ^ t[4 * 256 + Int((word >> 24) & 0xFF)]
                ^ t[3 * 256 + Int((word >> 32) & 0xFF)] ^ t[2 * 256 + Int((word >> 40) & 0xFF)]
                ^ t[1 * 256 + Int((word >> 48) & 0xFF)] ^ t[Int(word >> 56)]
            index += 8
        }
        while index < count {
            c = t[Int((c ^ UInt32(base.load(fromByteOffset: index, as: UInt8.self))) & 0xFF)] ^ (c >> 8)
            index += 1
        }
        return ~c
    }

    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        if let result = bytes.withContiguousStorageIfAvailable({ update(0, UnsafeRawBufferPointer($0)) }) {
            return result
        }
        return Array(bytes).withUnsafeBytes { update(0, $0) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import WALCore

/// The in-progress segment, `NAME.partial`: an append-only journal so that a crash leaves a tail we can
/// recognise and cut, never bytes we cannot tell apart from WAL. Layout (little-endian), see docs/architecture.md:
///
///     header  (48 bytes) "WSPJ", version 1, system identifier, segment size, timeline, segment number, CRC-32C
///     record* (16 + n)   "WSPR", segment offset, length n, CRC-32C over the record header fields and data; data
///
/// Records are contiguous in segment offsets starting at 0. The first record that is incomplete, fails its CRC,
/// or does not continue the previous one ends the journal: everything before it was fsynced in order.
public enum PartialSegment {
    static let headerLength = 48
    static let recordHeaderLength = 16
    static let headerMagic: [UInt8] = Array("WSPJ".utf8)
    static let recordMagic: [UInt8] = Array("WSPR".utf8)
    static let version: UInt32 = 1

    public struct Header: Hashable, Sendable {
        public var systemIdentifier: UInt64
        public var segment: SegmentName
    }

    static func encodeHeader(_ header: Header) -> [UInt8] {
        var out = headerMagic
        out.appendLE(version)
        out.appendLE(header.systemIdentifier)
        out.appendLE(header.segment.segmentSize.bytes)
        out.appendLE(header.segment.timeline)
        out.appendLE(UInt32(0))
        out.appendLE(header.segment.number)
        out.appendLE(CRC32C.checksum(out))
        out.appendLE(UInt32(0))
        assert(out.count == headerLength)
        return out
    }

    static func decodeHeader(_ bytes: [UInt8], path: String) throws -> Header {
        guard bytes.count >= headerLength, Array(bytes[0..<4]) == headerMagic else {
            throw SpoolError(.corrupt, "\"\(path)\" is not a walship partial segment (bad header)")
        }
        guard bytes.readLE(40, UInt32.self) == CRC32C.checksum(bytes[0..<40]) else {
            throw SpoolError(.corrupt, "\"\(path)\" has a damaged header (CRC mismatch)")
        }
        guard bytes.readLE(4, UInt32.self) == version else {
            throw SpoolError(.corrupt, "\"\(path)\" has unknown partial format version \(bytes.readLE(4, UInt32.self))")
        }
        guard let size = WALSegmentSize(bytes: bytes.readLE(16, UInt64.self)) else {
            throw SpoolError(.corrupt, "\"\(path)\" names an invalid segment size")
        }
        let segment = SegmentName(timeline: bytes.readLE(24, UInt32.self), number: bytes.readLE(32, UInt64.self),
                                  segmentSize: size)
        return Header(systemIdentifier: bytes.readLE(8, UInt64.self), segment: segment)
    }

    static func encodeRecordHeader(offset: UInt32, data: UnsafeRawBufferPointer) -> [UInt8] {
        var head = recordMagic
        head.appendLE(offset)
        head.appendLE(UInt32(data.count))
        let crc = CRC32C.update(head.withUnsafeBytes { CRC32C.update(0, $0) }, data)
        head.appendLE(crc)
        return head
    }

    /// What a partial file holds: its header, the WAL bytes from the segment start, and where the journal's
    /// valid part ends in the file.
    public struct Contents: Sendable {
        public var header: Header
        public var wal: [UInt8]
        public var journalLength: Int
        /// Bytes after the valid journal that were not zero: a torn write from a crash.
        public var hadTornTail: Bool
    }

    /// Reads a partial file without changing it (also used by `restore-wal`, possibly as another OS user).
    public static func read(path: String) throws -> Contents {
        let fd = try FileIO.open(path, O_RDONLY)
        defer { FileIO.close(fd) }
        let size = try FileIO.fileSize(fd, path: path)
        let file = try FileIO.preadAll(fd, count: size, at: 0, path: path)
        let header = try decodeHeader(file, path: path)
        let segmentBytes = Int(header.segment.segmentSize.bytes)
        var wal: [UInt8] = []
        wal.reserveCapacity(segmentBytes)
        var position = headerLength
        while position + recordHeaderLength <= file.count {
            guard Array(file[position..<position + 4]) == recordMagic else { break }
            let offset = Int(file.readLE(position + 4, UInt32.self))
            let length = Int(file.readLE(position + 8, UInt32.self))
            let crc = file.readLE(position + 12, UInt32.self)
            let dataStart = position + recordHeaderLength
            guard offset == wal.count, length > 0, offset + length <= segmentBytes, dataStart + length <= file.count
            else { break }
            let computed = file.withUnsafeBytes { raw in
                CRC32C.update(CRC32C.update(0, UnsafeRawBufferPointer(rebasing: raw[position..<position + 12])),
                              UnsafeRawBufferPointer(rebasing: raw[dataStart..<dataStart + length]))
            }
            guard computed == crc else { break }
            wal.append(contentsOf: file[dataStart..<dataStart + length])
            position = dataStart + length
        }
        let tail = file[position..<min(file.count, position + 64 * 1024)]
        return Contents(header: header, wal: wal, journalLength: position, hadTornTail: tail.contains { $0 != 0 })
    }
}

/// Appends journal records to one `.partial` file. Owned by the spool's writer; not thread-safe.
final class PartialSegmentWriter {
    let path: String
    let header: PartialSegment.Header
    private let fd: Int32
    private(set) var journalLength: Int
    private var preallocated: Int

    /// Creates a new, empty journal, durable before it is used: a crash right after leaves a valid empty journal.
    init(creating path: String, header: PartialSegment.Header, directory: String) throws {
        self.path = path
        self.header = header
        fd = try FileIO.open(path, O_RDWR | O_CREAT | O_TRUNC)
        journalLength = PartialSegment.headerLength
        preallocated = Self.preallocationSize(header)
        do {
            try FileIO.preallocate(fd, bytes: preallocated, path: path)
            try PartialSegment.encodeHeader(header).withUnsafeBytes { (raw) in
                try FileIO.pwriteAll(fd, raw, at: 0, path: path)
            }
            try FileIO.syncFile(fd, path: path)
            try FileIO.syncDirectory(directory)
        } catch {
            FileIO.close(fd)
            throw error
        }
    }

    /// Reopens a recovered journal; everything after `journalLength` is cut and re-zeroed so a torn
    /// tail can never be mistaken for records later.
    init(reopening path: String, contents: PartialSegment.Contents) throws {
        self.path = path
        header = contents.header
        fd = try FileIO.open(path, O_RDWR)
        journalLength = contents.journalLength
        preallocated = Self.preallocationSize(header)
        do {
            try FileIO.truncate(fd, to: journalLength, path: path)
            try FileIO.preallocate(fd, bytes: max(preallocated, journalLength), path: path)
            try FileIO.syncFile(fd, path: path)
        } catch {
            FileIO.close(fd)
            throw error
        }
    }

    deinit { FileIO.close(fd) }

    private static func preallocationSize(_ header: PartialSegment.Header) -> Int {
        let segment = Int(header.segment.segmentSize.bytes)
        return PartialSegment.headerLength + segment + segment / 16
    }

    /// Writes one record (not yet durable).
    func append(offset: Int, _ data: UnsafeRawBufferPointer) throws {
        let head = PartialSegment.encodeRecordHeader(offset: UInt32(offset), data: data)
        let needed = journalLength + head.count + data.count
        if needed > preallocated {
            preallocated = needed + Int(header.segment.segmentSize.bytes) / 16
            try FileIO.preallocate(fd, bytes: preallocated, path: path)
        }
        try head.withUnsafeBytes { (raw) in try FileIO.pwriteAll(fd, raw, at: journalLength, path: path) }
        try FileIO.pwriteAll(fd, data, at: journalLength + head.count, path: path)
        journalLength = needed
    }

    func sync() throws { try FileIO.syncData(fd, path: path) }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

extension Collection where Element == UInt8, Index == Int {
    func readLE<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value |= T(self[startIndex + offset + i]) << (8 * i) }
        return value
    }
}

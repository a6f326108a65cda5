import LZ4Codec
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// The in-progress segment, `NAME.partial`: an append-only journal so that a crash leaves a tail we can
/// recognise and cut, never bytes we cannot tell apart from WAL. Layout (little-endian), see docs/architecture.md:
///
///     header  (48 bytes) "WSPJ", version, system identifier, segment size, timeline, segment number, CRC-32C
///     record  (16 + n)   "WSPR", segment offset, length n, CRC-32C over the record header fields and data; data
///     record  (20 + m)   "WSPZ", segment offset, WAL length n, block length m, CRC-32C over the record header
///                        fields and block; one LZ4 block (the sender's) that decompresses to the n WAL bytes
///
/// Version 2 journals hold either kind of record; version 1 journals (older receivers) only "WSPR". Records are
/// contiguous in segment offsets starting at 0. The first record that is incomplete, fails its CRC, or does not
/// continue the previous one ends the journal: everything before it was fsynced in order.
public enum PartialSegment {
    static let headerLength = 48
    static let recordHeaderLength = 16
    static let blockRecordHeaderLength = 20
    static let headerMagic: [UInt8] = Array("WSPJ".utf8)
    static let recordMagic: [UInt8] = Array("WSPR".utf8)
    static let blockRecordMagic: [UInt8] = Array("WSPZ".utf8)
    /// Written in new journals; 1 is still read (and continued with raw records only).
    public static let version: UInt32 = 2

    public struct Header: Hashable, Sendable {
        public var systemIdentifier: UInt64
        public var segment: SegmentName
        /// The journal's format version: block records only from version 2.
        public var version: UInt32

        public init(systemIdentifier: UInt64, segment: SegmentName, version: UInt32 = PartialSegment.version) {
            self.systemIdentifier = systemIdentifier
            self.segment = segment
            self.version = version
        }
    }

    static func encodeHeader(_ header: Header) -> [UInt8] {
        var out = headerMagic
        out.appendLE(header.version)
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
            throw SpoolError(
                .corrupt,
                "\"\(path)\" is not a walship partial segment (bad header; hint: if it is not walship's, move it out of the spool; if it is, the disk damaged it: keep a copy and check the disk)"
            )
        }
        guard bytes.readLE(40, UInt32.self) == CRC32C.checksum(bytes[0..<40]) else {
            throw SpoolError(.corrupt, "\"\(path)\" has a damaged header (CRC mismatch)")
        }
        let version = bytes.readLE(4, UInt32.self)
        guard (1...Self.version).contains(version) else {
            throw SpoolError(
                .corrupt, "\"\(path)\" has unknown partial format version \(version); it was written by a newer walship")
        }
        guard let size = WALSegmentSize(bytes: bytes.readLE(16, UInt64.self)) else {
            throw SpoolError(.corrupt, "\"\(path)\" names an invalid segment size")
        }
        let segment = SegmentName(
            timeline: bytes.readLE(24, UInt32.self), number: bytes.readLE(32, UInt64.self),
            segmentSize: size)
        return Header(systemIdentifier: bytes.readLE(8, UInt64.self), segment: segment, version: version)
    }

    /// The header of a record holding `data` as it is.
    static func encodeRecordHeader(offset: UInt32, data: UnsafeRawBufferPointer) -> [UInt8] {
        var head = recordMagic
        head.appendLE(offset)
        head.appendLE(UInt32(data.count))
        head.appendLE(CRC32C.update(head.withUnsafeBytes { CRC32C.update(0, $0) }, data))
        return head
    }

    /// The header of a record holding `walLength` WAL bytes as the LZ4 block `block`.
    static func encodeBlockRecordHeader(offset: UInt32, walLength: Int, block: UnsafeRawBufferPointer) -> [UInt8] {
        var head = blockRecordMagic
        head.appendLE(offset)
        head.appendLE(UInt32(walLength))
        head.appendLE(UInt32(block.count))
        head.appendLE(CRC32C.update(head.withUnsafeBytes { CRC32C.update(0, $0) }, block))
        return head
    }

    /// One record's header, as read from the file.
    struct Record {
        /// Where the record's WAL starts in the segment, and how many WAL bytes it holds.
        var offset: Int
        var walLength: Int
        var headerLength: Int
        /// Bytes stored after the header: `walLength` for a raw record, the block's length for a block record.
        var storedLength: Int
        var compressed: Bool
        var crc: UInt32

        var totalLength: Int { headerLength + storedLength }

        /// Parses the header at the start of `bytes`; nil when it is not a record header, is cut short, or is a
        /// block record in a version 1 journal (which cannot hold one).
        init?(header bytes: UnsafeRawBufferPointer, journalVersion: UInt32) {
            guard bytes.count >= PartialSegment.recordHeaderLength else { return nil }
            let magic = Array(bytes[0..<4])
            if magic == PartialSegment.recordMagic {
                compressed = false
                headerLength = PartialSegment.recordHeaderLength
                walLength = Int(bytes.readLE(8, UInt32.self))
                storedLength = walLength
                crc = bytes.readLE(12, UInt32.self)
            } else if magic == PartialSegment.blockRecordMagic, journalVersion >= 2,
                bytes.count >= PartialSegment.blockRecordHeaderLength
            {
                compressed = true
                headerLength = PartialSegment.blockRecordHeaderLength
                walLength = Int(bytes.readLE(8, UInt32.self))
                storedLength = Int(bytes.readLE(12, UInt32.self))
                crc = bytes.readLE(16, UInt32.self)
            } else {
                return nil
            }
            offset = Int(bytes.readLE(4, UInt32.self))
        }

        /// Checks the CRC over the header's fields (`header`, at least `headerLength` bytes) and `stored`, and
        /// appends the record's WAL from segment offset `from` on to `wal`. False if the CRC fails (a torn write).
        /// A block that passes its CRC but does not decompress was damaged before it was written: that throws.
        func appendWAL(
            header: UnsafeRawBufferPointer, stored: UnsafeRawBufferPointer, from: Int,
            to wal: inout [UInt8], path: String
        ) throws -> Bool {
            let fieldsCRC = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: header[0..<headerLength - 4]))
            guard stored.count == storedLength, CRC32C.update(fieldsCRC, stored) == crc else { return false }
            let skip = from - offset
            guard compressed else {
                wal.append(contentsOf: UnsafeRawBufferPointer(rebasing: stored[skip...]))
                return true
            }
            // From inside the record only when a reader resumes mid-record: rare, so the prefix is cut after.
            let before = wal.count
            guard LZ4.decompressBlock(stored, uncompressedLength: walLength, appendingTo: &wal) else {
                throw SpoolError(
                    .corrupt,
                    "\"\(path)\": the LZ4 block for segment offset \(offset) does not decompress to its \(walLength) bytes")
            }
            if skip > 0 { wal.removeSubrange(before..<before + skip) }
            return true
        }
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

    /// Whether the file at `path` holds nothing but zeros: a journal preallocated by a walship that was stopped
    /// before it wrote the header (versions before `.partial.tmp`). Records follow only a durable header, so
    /// such a file never held WAL anyone acknowledged.
    static func neverWritten(path: String, io: FileIO = .posix) throws -> Bool {
        let fd = try io.open(path, O_RDONLY)
        defer { io.close(fd) }
        let size = try io.fileSize(fd, path: path)
        // The header first: a journal that has one answers after reading a few bytes.
        var offset = 0
        var pieceLength = headerLength
        while offset < size {
            let piece = try io.preadAll(fd, count: min(pieceLength, size - offset), at: offset, path: path)
            guard piece.allSatisfy({ $0 == 0 }) else { return false }
            offset += piece.count
            pieceLength = 1 << 20
        }
        return true
    }

    /// Reads a partial file without changing it (also used by `restore-wal`, possibly as another OS user).
    /// Record by record, as `JournalFollower` does: the file is preallocated beyond the segment's size, and
    /// reading it whole cost the receiver 17 MiB of memory at each start on top of the segment's WAL.
    public static func read(path: String, io: FileIO = .posix) throws -> Contents {
        let fd = try io.open(path, O_RDONLY)
        defer { io.close(fd) }
        let header = try decodeHeader(try io.preadAll(fd, count: headerLength, at: 0, path: path), path: path)
        let segmentBytes = Int(header.segment.segmentSize.bytes)
        var wal: [UInt8] = []
        wal.reserveCapacity(segmentBytes)
        var position = headerLength
        while let found = try recordHeader(fd: fd, at: position, version: header.version, path: path, io: io),
            found.record.offset == wal.count,
            try appendRecord(
                found.record, head: found.head, fd: fd, at: position, segmentBytes: segmentBytes,
                from: found.record.offset, to: &wal, path: path, io: io)
        {
            position += found.record.totalLength
        }
        let tail = try io.preadAll(fd, count: 64 * 1024, at: position, path: path)
        return Contents(header: header, wal: wal, journalLength: position, hadTornTail: tail.contains { $0 != 0 })
    }

    /// The record header at `offset` of a journal open as `fd`, with its bytes; nil where no record begins.
    static func recordHeader(
        fd: Int32, at offset: Int, version: UInt32, path: String, io: FileIO = .posix
    ) throws
        -> (record: Record, head: [UInt8])?
    {
        let head = try io.preadAll(fd, count: blockRecordHeaderLength, at: offset, path: path)
        guard let record = head.withUnsafeBytes({ Record(header: $0, journalVersion: version) }) else { return nil }
        return (record, head)
    }

    /// Reads the stored bytes of the record at `offset` and appends its WAL from segment offset `from` to `wal`;
    /// false (nothing appended) when they are not all there or fail their CRC. A damaged header's lengths are
    /// not believed, nor allocated for, before the CRC has had its say: the record must fit the segment
    /// (`segmentBytes`) and the file.
    static func appendRecord(
        _ record: Record, head: [UInt8], fd: Int32, at offset: Int, segmentBytes: Int, from: Int,
        to wal: inout [UInt8], path: String, io: FileIO = .posix
    ) throws -> Bool {
        guard record.walLength > 0, record.offset + record.walLength <= segmentBytes,
            offset + record.totalLength <= (try io.fileSize(fd, path: path))
        else { return false }
        let stored = try io.preadAll(fd, count: record.storedLength, at: offset + record.headerLength, path: path)
        return try head.withUnsafeBytes { header in
            try stored.withUnsafeBytes { try record.appendWAL(header: header, stored: $0, from: from, to: &wal, path: path) }
        }
    }
}

/// Appends journal records to one `.partial` file. Owned by the spool's writer; not thread-safe.
final class PartialSegmentWriter {
    let path: String
    private let io: FileIO
    let header: PartialSegment.Header
    private let fd: Int32
    private(set) var journalLength: Int
    private var preallocated: Int
    /// Where the file stops holding written blocks (records or zeros); past it, only space reserved by
    /// `posix_fallocate`. See `ZeroFill`.
    private var initializedEnd: Int

    /// Creates a new, empty journal, durable before it is used. It is prepared as `NAME.partial.tmp` and renamed
    /// into place, so a crash leaves either a valid empty journal or a temporary file that recovery removes,
    /// never a `.partial` without its header.
    init(creating path: String, header: PartialSegment.Header, directory: String, io: FileIO) throws {
        self.path = path
        self.io = io
        self.header = header
        let tmp = path + ".tmp"
        fd = try io.open(tmp, O_RDWR | O_CREAT | O_TRUNC)
        journalLength = PartialSegment.headerLength
        preallocated = Self.preallocationSize(header)
        initializedEnd = journalLength
        do {
            try io.preallocate(fd, bytes: preallocated, path: tmp)
            try PartialSegment.encodeHeader(header).withUnsafeBytes { (raw) in
                try io.pwriteAll(fd, raw, at: 0, path: tmp)
            }
            try io.syncFile(fd, path: tmp)
            try io.rename(tmp, to: path)
            try io.syncDirectory(directory)
        } catch {
            io.close(fd)
            try? io.remove(tmp)
            throw error
        }
    }

    /// Reopens a recovered journal. Its valid part is written anew into a new file (fsynced, renamed into
    /// place, directory fsynced) before anything in it is acknowledged again: what recovery read may have come
    /// from the page cache, holding pages a failed fsync dropped that never reached the disk. Everything after
    /// the valid part, a torn tail included, is left behind with the old file.
    init(reopening path: String, contents: PartialSegment.Contents, directory: String, io: FileIO) throws {
        self.path = path
        self.io = io
        header = contents.header
        journalLength = contents.journalLength
        preallocated = max(Self.preallocationSize(header), journalLength)
        initializedEnd = journalLength
        let tmp = path + ".tmp"
        let source = try io.open(path, O_RDONLY)
        defer { io.close(source) }
        fd = try io.open(tmp, O_RDWR | O_CREAT | O_TRUNC)
        do {
            try io.preallocate(fd, bytes: preallocated, path: tmp)
            var copied = 0
            while copied < journalLength {
                let piece = try io.preadAll(source, count: min(1 << 20, journalLength - copied), at: copied, path: path)
                guard !piece.isEmpty else { throw SpoolError(.corrupt, "\"\(path)\" became shorter while it was recovered") }
                try piece.withUnsafeBytes { try io.pwriteAll(fd, $0, at: copied, path: tmp) }
                copied += piece.count
            }
            try io.syncFile(fd, path: tmp)
            try io.rename(tmp, to: path)
            try io.syncDirectory(directory)
        } catch {
            io.close(fd)
            try? io.remove(tmp)
            throw error
        }
    }

    deinit { io.close(fd) }

    private static func preallocationSize(_ header: PartialSegment.Header) -> Int {
        let segment = Int(header.segment.segmentSize.bytes)
        return PartialSegment.headerLength + segment + segment / 16
    }

    /// Writes one record (not yet durable): `data` as the LZ4 block `block` decompresses to, when given and the
    /// journal's version allows it (a quarter of the bytes to write and checksum), else as it is.
    func append(offset: Int, _ data: UnsafeRawBufferPointer, block: UnsafeRawBufferPointer? = nil) throws {
        if let block, header.version >= 2 {
            try write(PartialSegment.encodeBlockRecordHeader(offset: UInt32(offset), walLength: data.count, block: block), block)
        } else {
            try write(PartialSegment.encodeRecordHeader(offset: UInt32(offset), data: data), data)
        }
    }

    private func write(_ head: [UInt8], _ stored: UnsafeRawBufferPointer) throws {
        let needed = journalLength + head.count + stored.count
        if needed > preallocated {
            preallocated = needed + Int(header.segment.segmentSize.bytes) / 16
            try io.preallocate(fd, bytes: preallocated, path: path)
        }
        if let zeros = ZeroFill.range(
            recordStart: journalLength, recordEnd: needed, initializedEnd: initializedEnd,
            reservedEnd: preallocated)
        {
            try io.writeZeros(fd, zeros, path: path)
            initializedEnd = zeros.upperBound
        }
        try head.withUnsafeBytes { (raw) in try io.pwriteAll(fd, raw, stored, at: journalLength, path: path) }
        journalLength = needed
        initializedEnd = max(initializedEnd, needed)
    }

    func sync() throws { try io.syncData(fd, path: path) }
}

/// Zeroes the journal's space ahead of small records. The journal's space is reserved with `posix_fallocate`,
/// which on ext4 and XFS leaves it unwritten: a record written there makes the next fdatasync also record
/// that the blocks now hold data, a filesystem journal commit on every synchronous commit. Records written
/// over blocks that already hold zeros need only their data flushed, as in PostgreSQL's WAL segments, which
/// it zero-fills when it creates them. Measured on ext4 here, a 3 kB record and its fdatasync: 125 against
/// 85 µs on average. Zeroing the whole segment up front would hold one commit up for a 16 MiB write, so the
/// space is zeroed `step` at a time, ahead of the record that needs it. Large records (a catch-up's blocks,
/// synced many at a time) go straight into the reserved space: zeroing first would double their writes.
enum ZeroFill {
    static let step = 256 << 10
    /// Records of this size and more are not worth zeroing ahead of.
    static let largeRecord = 64 << 10

    /// The byte range to zero before writing a record at `recordStart..<recordEnd`, or nil. `initializedEnd`:
    /// where written blocks end; `reservedEnd`: where the reserved space ends (zeroing never grows the file).
    static func range(recordStart: Int, recordEnd: Int, initializedEnd: Int, reservedEnd: Int) -> Range<Int>? {
        guard recordEnd - recordStart < largeRecord, recordEnd > initializedEnd else { return nil }
        let end = min(recordEnd + step, reservedEnd)
        return end > recordEnd ? recordEnd..<end : nil
    }
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

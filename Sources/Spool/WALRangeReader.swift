#if canImport(Glibc)
import Glibc
#endif
import ShipProtocol
import WALCore

/// Reads WAL by LSN range from a system's spool: completed segments from their LZ4 frames, the
/// in-progress segment by following its journal as records are appended. Used by the standby endpoint
/// (one reader per standby connection); reads only up to the durable end it is given.
public final class WALRangeReader {
    let walDirectory: String
    let segmentSize: WALSegmentSize
    private var segment: SegmentName?
    private var wal: [UInt8] = []
    private var complete = false
    private var journal: JournalFollower?

    public init(spool: SystemSpool) {
        walDirectory = spool.walDirectory
        segmentSize = spool.segmentSize
    }

    public struct Missing: Error, CustomStringConvertible {
        public let segment: SegmentName
        public var description: String { "requested WAL segment \(segment) has already been removed" }
    }

    /// Up to `maxBytes` of WAL from `start` on `timeline`, never past `durableEnd` or the segment's end.
    public func read(timeline: TimeLineID, from start: LSN, durableEnd: LSN, maxBytes: Int) throws -> [UInt8] {
        let name = SegmentName(timeline: timeline, containing: start, segmentSize: segmentSize)
        if name != segment { try open(name) }
        let offset = Int(segmentSize.offset(of: start))
        let wanted = min(maxBytes, Int(durableEnd.rawValue - start.rawValue), Int(segmentSize.bytes) - offset)
        if !complete && wal.count < offset + wanted {
            if let journal {
                try journal.catchUp(into: &wal)
            }
            if wal.count < offset + wanted, FileIO.exists(walDirectory + "/\(name).lz4") { try open(name) }
        }
        let end = min(wal.count, offset + wanted)
        return end > offset ? Array(wal[offset..<end]) : []
    }

    private func open(_ name: SegmentName) throws {
        segment = name
        journal = nil
        complete = false
        wal = []
        let completed = walDirectory + "/\(name).lz4"
        if FileIO.exists(completed) {
            let frame = try FileIO.readWholeFile(completed, maxBytes: Int(segmentSize.bytes) + (1 << 20))
            wal = try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: Int(segmentSize.bytes)) }
            complete = true
            return
        }
        let partial = walDirectory + "/\(name).partial"
        guard let follower = try? JournalFollower(path: partial) else {
            // Completed between the two checks: the finished file is there now.
            if FileIO.exists(completed) { return try open(name) }
            segment = nil
            throw Missing(segment: name)
        }
        journal = follower
        try follower.catchUp(into: &wal)
    }
}

/// Follows one `.partial` journal through an open descriptor, which stays valid after the journal is
/// removed at completion, so the whole segment can always be read from it.
final class JournalFollower {
    let fd: Int32
    let path: String
    private var offset = PartialSegment.headerLength

    init(path: String) throws {
        self.path = path
        fd = try FileIO.open(path, O_RDONLY)
        let header = try FileIO.preadAll(fd, count: PartialSegment.headerLength, at: 0, path: path)
        do { _ = try PartialSegment.decodeHeader(header, path: path) } catch {
            FileIO.close(fd)
            throw error
        }
    }

    deinit { FileIO.close(fd) }

    /// Appends the records written since the last call. Stops at the first incomplete record.
    func catchUp(into wal: inout [UInt8]) throws {
        while true {
            let head = try FileIO.preadAll(fd, count: PartialSegment.recordHeaderLength, at: offset, path: path)
            guard head.count == PartialSegment.recordHeaderLength, Array(head[0..<4]) == PartialSegment.recordMagic,
                Int(head.readLE(4, UInt32.self)) == wal.count
            else { return }
            let length = Int(head.readLE(8, UInt32.self))
            let data = try FileIO.preadAll(fd, count: length, at: offset + PartialSegment.recordHeaderLength, path: path)
            guard data.count == length else { return }
            let crc = data.withUnsafeBytes { CRC32C.update(head.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[0..<12])) }, $0) }
            guard crc == head.readLE(12, UInt32.self) else { return }
            wal.append(contentsOf: data)
            offset += PartialSegment.recordHeaderLength + length
        }
    }
}

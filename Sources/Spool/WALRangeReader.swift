import LZ4Codec
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// Reads WAL by LSN range from a system's spool: completed segments by decompressing their LZ4 frames as
/// far as needed, the in-progress segment by following its journal as records are appended. Used by the
/// standby endpoint (one reader per standby connection) and by the sender's local buffer; reads only up to the
/// durable end it is given. It keeps a window of the segment from the last read on, about as large as the
/// reads asked for, never the whole segment: a reader per standby must not cost a segment of memory.
public final class WALRangeReader {
    let walDirectory: String
    let segmentSize: WALSegmentSize
    private var segment: SegmentName?
    /// The segment's bytes from offset `windowStart`.
    private var window: [UInt8] = []
    private var windowStart = 0
    private var source: Source?

    private enum Source {
        case completed(CompressedSegment)
        case journal(JournalFollower)
    }

    public convenience init(spool: SystemSpool) {
        self.init(walDirectory: spool.walDirectory, segmentSize: spool.segmentSize)
    }

    /// A reader of the `wal/` directory of a system's spool that this process does not own (it only reads).
    public init(walDirectory: String, segmentSize: WALSegmentSize) {
        self.walDirectory = walDirectory
        self.segmentSize = segmentSize
    }

    public struct Missing: Error, CustomStringConvertible {
        public let segment: SegmentName
        public var description: String { "requested WAL segment \(segment) has already been removed" }
    }

    /// Bytes held in memory now (for tests of the memory bound).
    var bufferedBytes: Int { window.count }

    /// Up to `maxBytes` of WAL from `start` on `timeline`, never past `durableEnd` or the segment's end.
    public func read(timeline: TimeLineID, from start: LSN, durableEnd: LSN, maxBytes: Int) throws -> [UInt8] {
        let name = SegmentName(timeline: timeline, containing: start, segmentSize: segmentSize)
        let offset = Int(segmentSize.offset(of: start))
        // Reads go forward; a read before the window (a standby restarting its stream) starts the segment over.
        if name != segment || offset < windowStart { try open(name) }
        let wanted = min(maxBytes, Int(durableEnd.rawValue - start.rawValue), Int(segmentSize.bytes) - offset)
        try moveWindow(to: offset)
        let target = offset + wanted
        if windowEnd < target { try fill(upTo: target) }
        if windowEnd < target, case .journal = source, FileIO.exists(walDirectory + "/\(name).lz4") {
            // Completed since: the finished file has everything.
            try open(name)
            try moveWindow(to: offset)
            try fill(upTo: target)
        }
        let end = min(windowEnd, target)
        return end > offset ? Array(window[(offset - windowStart)..<(end - windowStart)]) : []
    }

    private var windowEnd: Int { windowStart + window.count }

    private func fill(upTo target: Int) throws {
        switch source {
        case .completed(let compressed):
            while windowEnd < target, !compressed.finished {
                try compressed.read(into: &window, maxOutput: target - windowEnd)
                if windowStart + window.count > Int(segmentSize.bytes) {
                    throw SpoolError(.corrupt, "\(walDirectory)/\(segment.map { "\($0)" } ?? "?").lz4 holds more than a segment")
                }
            }
        case .journal(let follower):
            try follower.catchUp(into: &window, base: windowStart, until: target)
        case nil:
            break
        }
    }

    /// Starts the window at `offset` (at or after its start), forgetting what lies before.
    private func moveWindow(to offset: Int) throws {
        guard offset > windowStart else { return }
        let drop = min(offset - windowStart, window.count)
        window.removeFirst(drop)
        windowStart += drop
        if windowStart < offset { try skip(to: offset) }
    }

    /// Moves an empty window forward to `offset` without keeping what lies before it.
    private func skip(to offset: Int) throws {
        switch source {
        case .completed(let compressed):
            while windowStart < offset, !compressed.finished {
                var discarded: [UInt8] = []
                try compressed.read(into: &discarded, maxOutput: min(256 << 10, offset - windowStart))
                windowStart += discarded.count
            }
        case .journal, nil:
            // The follower skips records before the window's start by itself.
            windowStart = offset
        }
    }

    private func open(_ name: SegmentName) throws {
        segment = name
        source = nil
        window = []
        windowStart = 0
        let completed = walDirectory + "/\(name).lz4"
        if FileIO.exists(completed), let compressed = try? CompressedSegment(path: completed) {
            source = .completed(compressed)
            return
        }
        let partial = walDirectory + "/\(name).partial"
        guard let follower = try? JournalFollower(path: partial) else {
            // Completed between the two checks: the finished file is there now.
            if FileIO.exists(completed) { return try open(name) }
            segment = nil
            throw Missing(segment: name)
        }
        source = .journal(follower)
    }
}

/// A completed segment's LZ4 frame, read from its file 256 KiB at a time and decompressed as far as asked.
final class CompressedSegment {
    let fd: Int32
    let path: String
    private let reader: LZ4.FrameReader
    private var input: [UInt8] = []
    private var inputUsed = 0
    private var fileOffset = 0

    init(path: String) throws {
        self.path = path
        fd = try FileIO.open(path, O_RDONLY)
        do { reader = try LZ4.FrameReader() } catch {
            FileIO.close(fd)
            throw SpoolError(.corrupt, "\(path): \(error)")
        }
    }

    deinit { FileIO.close(fd) }

    var finished: Bool { reader.finished }

    /// Appends up to `maxOutput` decompressed bytes to `output` (fewer only at the frame's end).
    func read(into output: inout [UInt8], maxOutput: Int) throws {
        let before = output.count
        while output.count - before < maxOutput && !reader.finished {
            if inputUsed == input.count {
                input = try FileIO.preadAll(fd, count: 256 << 10, at: fileOffset, path: path)
                inputUsed = 0
                fileOffset += input.count
                guard !input.isEmpty else { throw SpoolError(.corrupt, "\(path) ends before its LZ4 frame does") }
            }
            let used: Int
            do {
                used = try input.withUnsafeBytes { raw in
                    try reader.read(
                        UnsafeRawBufferPointer(rebasing: raw[inputUsed...]), into: &output,
                        maxOutput: maxOutput - (output.count - before))
                }
            } catch {
                throw SpoolError(.corrupt, "\(path): \(error)")
            }
            inputUsed += used
        }
    }
}

/// Follows one `.partial` journal through an open descriptor, which stays valid after the journal is
/// removed at completion, so the whole segment can always be read from it.
final class JournalFollower {
    let fd: Int32
    let path: String
    private let version: UInt32
    private let segmentBytes: Int
    private var offset = PartialSegment.headerLength

    init(path: String) throws {
        self.path = path
        fd = try FileIO.open(path, O_RDONLY)
        let header = try FileIO.preadAll(fd, count: PartialSegment.headerLength, at: 0, path: path)
        do {
            let decoded = try PartialSegment.decodeHeader(header, path: path)
            version = decoded.version
            segmentBytes = Int(decoded.segment.segmentSize.bytes)
        } catch {
            FileIO.close(fd)
            throw error
        }
    }

    deinit { FileIO.close(fd) }

    /// Appends the records written since the last call to `wal`, which holds the segment from offset `base`,
    /// until it reaches `target` (or, without one, all of them). Stops at the first incomplete record.
    func catchUp(into wal: inout [UInt8], base: Int = 0, until target: Int = .max) throws {
        while base + wal.count < target {
            guard let (record, head) = try PartialSegment.recordHeader(fd: fd, at: offset, version: version, path: path) else {
                return
            }
            // After a reopen the window may start inside a record: skip records wholly before it.
            if record.offset + record.walLength <= base + wal.count {
                offset += record.totalLength
                continue
            }
            guard record.offset <= base + wal.count,
                try PartialSegment.appendRecord(
                    record, head: head, fd: fd, at: offset, segmentBytes: segmentBytes,
                    from: base + wal.count, to: &wal, path: path)
            else { return }
            offset += record.totalLength
        }
    }
}

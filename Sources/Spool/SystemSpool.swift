import LZ4Codec
import Logging
import Synchronization
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// Where a system's WAL stands in the spool.
public struct SpoolPosition: Hashable, Sendable {
    /// Timeline of the newest WAL; 0 while the spool is empty.
    public var timeline: TimeLineID
    /// End of WAL written to the spool's files (not necessarily fsynced).
    public var written: LSN
    /// End of WAL known to be on disk. Only this is ever acknowledged.
    public var durable: LSN

    public static let empty = SpoolPosition(timeline: 0, written: .invalid, durable: .invalid)
}

/// The WAL of one source system: `ROOT/<system-identifier>/wal/`.
///
/// Completed segments are `NAME.lz4` (one LZ4 frame, byte-identical to the primary's segment once
/// decompressed); the in-progress one is `NAME.partial` (see `PartialSegment`); history files are stored as is.
/// Mutating methods are called from one writer at a time (the receiver's spool thread for this system);
/// `position` may be read from anywhere.
public final class SystemSpool: @unchecked Sendable {
    public let systemIdentifier: UInt64
    public let segmentSize: WALSegmentSize
    public let directory: String
    public let walDirectory: String
    private let logger: Logger
    /// This system's way to the file system; its latch stops the spool after a failed fsync.
    let io: FileIO

    private let positionBox = Mutex(SpoolPosition.empty)
    public var position: SpoolPosition { positionBox.withLock { $0 } }

    private struct Waiters {
        var next = 0
        var continuations: [Int: CheckedContinuation<Void, Never>] = [:]
        var observers: [Int: DurableObserver] = [:]
    }
    private let waiters = Mutex(Waiters())

    private var current: PartialSegmentWriter?
    /// Bytes of the current segment written so far.
    private var segmentLength = 0
    /// The current segment's bytes from the start of the page its end is in, up to a page header's length:
    /// validation of the next chunk needs a page header that may be split across chunks, and nothing else.
    private var pageHead: [UInt8] = []
    /// Compresses the current segment into `NAME.lz4.tmp` as it arrives, so completion is a rename; nil after
    /// a write failure, and then completion compresses from the journal instead.
    private var compressor: SegmentCompressor?
    private var validator: WALSegmentValidator?
    /// Whether a failed fsync stopped this spool: it refuses WAL and acknowledges nothing more until its files
    /// are read again (a restart, or `Spool.reopen`). A failed fsync while completing a segment does not stop
    /// it: the journal, fsynced before, still holds the WAL, and completion is tried again.
    public var stoppedByFsyncFailure: Bool { fsyncFailure != nil }

    /// The failed fsync that stopped this spool, if one did.
    public var fsyncFailure: SpoolError? { io.latch?.error }
    /// Asked before each new segment (the spool's quota).
    private let reserve: (@Sendable (UInt64) throws -> Void)?

    init(
        root: String, systemIdentifier: UInt64, segmentSize: WALSegmentSize, logger: Logger, io: FileIO,
        reserve: (@Sendable (UInt64) throws -> Void)? = nil
    ) throws {
        self.io = io
        self.reserve = reserve
        self.systemIdentifier = systemIdentifier
        self.segmentSize = segmentSize
        self.directory = root + "/" + String(systemIdentifier)
        self.walDirectory = directory + "/wal"
        var logger = logger
        logger[metadataKey: "walship.system"] = "\(systemIdentifier)"
        self.logger = logger
        try io.makeDirectory(directory)
        try io.makeDirectory(walDirectory)
        try checkOrWriteSystemFile()
        try BackupCatalog.removeUnfinished(systemDirectory: directory, io: io)
        try recover()
    }

    /// Where the oldest WAL stored for the current timeline starts, or nil while the spool is empty.
    public func oldestLSN() throws -> LSN? {
        let pos = position
        guard pos.timeline != 0 else { return nil }
        let stored = try io.listDirectory(walDirectory).compactMap { name -> SegmentName? in
            guard let dot = name.firstIndex(of: ".") else { return nil }
            return SegmentName(name[..<dot], segmentSize: segmentSize)
        }
        return stored.filter { $0.timeline == pos.timeline }.min()?.startLSN
    }

    // MARK: - Writing

    /// Validates and writes `bytes`, which must continue exactly where the spool's WAL ends. Not durable until `sync()`.
    /// A brand-new spool must start at a segment boundary, so every stored segment is whole.
    /// `compressedBlock`, when given, is the LZ4 block `bytes` came in (the sender's); if they lie within one
    /// segment it is what the journal records and what the segment's `.lz4` stores, instead of `bytes` again.
    public func append(
        timeline tli: TimeLineID, startLSN: LSN, bytes: UnsafeRawBufferPointer,
        compressedBlock: UnsafeRawBufferPointer? = nil
    ) throws {
        try io.latch?.check()
        var pos = position
        if pos.timeline == 0 {
            guard segmentSize.offset(of: startLSN) == 0 else {
                throw SpoolError(
                    .notContiguous, "the first WAL for an empty spool must start at a segment boundary, got \(startLSN)")
            }
            // The first journal exists durably before the position names a timeline (see `switchTimeline`).
            try openSegment(SegmentName(timeline: tli, containing: startLSN, segmentSize: segmentSize))
            pos = SpoolPosition(timeline: tli, written: startLSN, durable: startLSN)
            positionBox.withLock { $0 = pos }
        }
        if tli != pos.timeline {
            try switchTimeline(to: tli, startLSN: startLSN, from: pos)
            pos = position
        }
        guard startLSN == pos.written else {
            throw SpoolError(.notContiguous, "WAL from \(startLSN) does not continue the spool, which ends at \(pos.written)")
        }
        var consumed = 0
        var lsn = startLSN
        // A whole segment whose completion failed earlier (disk full, say) is still in its journal:
        // complete it first. Until that works nothing more is accepted, so nothing more is acknowledged.
        if current != nil && segmentLength == Int(segmentSize.bytes) { try finishSegment() }
        while consumed < bytes.count {
            if current == nil { try openSegment(SegmentName(timeline: tli, containing: lsn, segmentSize: segmentSize)) }
            let offset = Int(segmentSize.offset(of: lsn))
            precondition(offset == segmentLength, "segment length out of step with the spool position")
            let n = min(bytes.count - consumed, Int(segmentSize.bytes) - offset)
            let slice = UnsafeRawBufferPointer(rebasing: bytes[consumed..<consumed + n])
            let validated = validator
            try validate(slice, at: offset)
            let block = n == bytes.count ? compressedBlock : nil
            do {
                try current!.append(offset: offset, slice, block: block)
            } catch {
                // Not stored: the same WAL comes again, and must be checked against the pages before it.
                validator = validated
                throw error
            }
            compress(slice, block: block)
            segmentLength = offset + n
            keepPageHead(slice, at: offset)
            consumed += n
            lsn = lsn.advanced(by: UInt64(n))
            positionBox.withLock { $0.written = lsn }
            if segmentLength == Int(segmentSize.bytes) { try finishSegment() }
        }
    }

    /// The primary site failed over: continue on the child timeline `tli`, whose history file must already be
    /// stored. The spool must hold its own timeline up to the fork, and the child's WAL starts at the fork's
    /// segment start (PostgreSQL copies the fork segment's prefix into the child's first segment). WAL beyond the
    /// fork stays in the old timeline's `.partial`, which is never served under a plain segment name.
    private func switchTimeline(to tli: TimeLineID, startLSN: LSN, from pos: SpoolPosition) throws {
        guard tli > pos.timeline else {
            throw SpoolError(
                .mismatch, "WAL for timeline \(tli) arrived while the spool holds the newer timeline \(pos.timeline)")
        }
        let path = walDirectory + "/" + historyFileName(timeline: tli)
        guard io.exists(path) else {
            throw SpoolError(.mismatch, "WAL for timeline \(tli) arrived before its history file")
        }
        let entries = try parseTimelineHistory(String(decoding: try io.readWholeFile(path, maxBytes: 1 << 20), as: UTF8.self))
        guard let (fork, child) = timelineEnd(of: pos.timeline, history: entries, current: tli), child == tli else {
            throw SpoolError(.mismatch, "timeline \(tli) does not branch off the spool's timeline \(pos.timeline)")
        }
        guard pos.written >= fork else {
            throw SpoolError(
                .notContiguous,
                "the spool ends at \(pos.written) on timeline \(pos.timeline), before its fork at \(fork); that timeline's WAL up to the fork is needed first"
            )
        }
        guard startLSN == segmentSize.segmentStart(of: fork) else {
            throw SpoolError(
                .notContiguous,
                "timeline \(tli) must start at \(segmentSize.segmentStart(of: fork)), the start of the fork's segment, not \(startLSN)"
            )
        }
        try current?.sync()
        // The new timeline's journal exists durably before the position says so: an acknowledgement on the new
        // timeline must survive a crash. Until then the old journal stays current.
        try openSegment(SegmentName(timeline: tli, containing: startLSN, segmentSize: segmentSize))
        if pos.written > fork {
            logger.critical(
                "WAL beyond the fork is kept aside in the old timeline's partial segment and never served on the new timeline",
                metadata: [
                    "walship.timeline": "\(pos.timeline)", "walship.fork_lsn": "\(fork)",
                    "walship.bytes_beyond_fork": "\(pos.written.bytesAfter(fork))",
                ])
        }
        positionBox.withLock { $0 = SpoolPosition(timeline: tli, written: startLSN, durable: startLSN) }
        notifyDurable()  // a standby streaming the old timeline learns that it ends
        logger.notice(
            "switched to a new timeline",
            metadata: [
                "walship.from_timeline": "\(pos.timeline)", "walship.timeline": "\(tli)", "walship.fork_lsn": "\(fork)",
            ])
    }

    /// Makes everything written durable and returns the new durable end.
    @discardableResult
    public func sync() throws -> LSN {
        try io.latch?.check()
        try current?.sync()
        let durable = positionBox.withLock {
            $0.durable = $0.written
            return $0.durable
        }
        notifyDurable()
        return durable
    }

    /// Suspends until the durable end passes `lsn` or `timeout` elapses; returns the durable end then.
    /// Readers (the standby endpoint) wake at once on each fsync instead of polling.
    public func waitForDurable(beyond lsn: LSN, timeout: Duration) async -> LSN {
        if position.durable > lsn { return position.durable }
        let id = waiters.withLock { w in
            defer { w.next += 1 }
            return w.next
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let resumeNow = self.waiters.withLock { w -> Bool in
                            if self.position.durable > lsn || Task.isCancelled { return true }
                            w.continuations[id] = continuation
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    self.waiters.withLock { $0.continuations.removeValue(forKey: id) }?.resume()
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
        return position.durable
    }

    /// Lets go of the files this object has open; for `Spool.reopen`.
    func close() {
        current = nil
        resetSegmentState()
    }

    /// Calls `body` after each advance of the durable end and each timeline switch, on the thread that made it
    /// (the spool's writer, in the middle of its work): `body` must only hand the news on. Until
    /// `stopObserving(_:)` with the returned id.
    public func observeDurable(_ body: @escaping @Sendable () -> Void) -> Int {
        waiters.withLock { w in
            defer { w.next += 1 }
            w.observers[w.next] = DurableObserver(body)
            return w.next
        }
    }

    public func stopObserving(_ id: Int) {
        _ = waiters.withLock { $0.observers.removeValue(forKey: id) }
    }

    private func notifyDurable() {
        let (ready, observers) = waiters.withLock { w in
            defer { w.continuations.removeAll() }
            return (Array(w.continuations.values), Array(w.observers.values))
        }
        ready.forEach { $0.resume() }
        observers.forEach { $0.body() }
    }

    /// Stores a timeline history file atomically; an existing file must be identical.
    public func storeHistory(timeline tli: TimeLineID, content: [UInt8]) throws {
        let path = walDirectory + "/" + historyFileName(timeline: tli)
        if io.exists(path) {
            let existing = try io.readWholeFile(path, maxBytes: 1 << 20)
            guard existing == content else {
                throw SpoolError(.mismatch, "\(historyFileName(timeline: tli)) differs from the copy already in the spool")
            }
            return
        }
        guard let text = String(validating: content, as: UTF8.self), (try? parseTimelineHistory(text)) != nil else {
            throw SpoolError(.invalidWAL, "\(historyFileName(timeline: tli)) is not a valid timeline history file")
        }
        try content.withUnsafeBytes { try io.writeAtomically($0, to: path, directory: walDirectory) }
    }

    private func openSegment(_ segment: SegmentName) throws {
        try reserve?(segmentSize.bytes)
        let path = walDirectory + "/\(segment).partial"
        current = try PartialSegmentWriter(
            creating: path, header: .init(systemIdentifier: systemIdentifier, segment: segment), directory: walDirectory, io: io)
        resetSegmentState()
        startCompressor(segment)
        validator = WALSegmentValidator(
            systemIdentifier: systemIdentifier, segmentSize: segmentSize,
            timeline: segment.timeline, segmentStart: segment.startLSN)
    }

    /// The segment is full: store it durably as `NAME.lz4`, then drop the journal.
    /// The journal itself needs no fsync first: what it holds beyond the last sync was never acknowledged, and
    /// the durable end moves only once the `.lz4` and its directory entry are on disk. Nor does the journal's
    /// removal: a crash that brings it back leaves it beside the finished file, and recovery keeps the latter.
    private func finishSegment() throws {
        guard let writer = current else { return }
        let segment = writer.header.segment
        let completed = walDirectory + "/\(segment).lz4"
        if let compressor {
            do { try compressor.finish(as: completed) } catch {
                // The frame's end is spent: the next attempt compresses from the journal.
                compressor.abandon()
                self.compressor = nil
                throw error
            }
            try io.syncDirectory(walDirectory, retry: .rewrittenOnRetry)
        } else {
            try storeCompleted(segment, wal: PartialSegment.read(path: writer.path, io: io).wal)
        }
        compressor = nil
        current = nil
        try io.remove(writer.path)
        resetSegmentState()
        positionBox.withLock { $0.durable = $0.written }
        notifyDurable()
        logger.info("segment completed", metadata: ["walship.segment": "\(writer.header.segment)"])
    }

    private func storeCompleted(_ segment: SegmentName, wal: [UInt8]) throws {
        let frame = wal.withUnsafeBytes { LZ4.compressFrame($0) }
        try frame.withUnsafeBytes {
            try io.writeAtomically($0, to: walDirectory + "/\(segment).lz4", directory: walDirectory, retry: .rewrittenOnRetry)
        }
    }

    private func resetSegmentState() {
        segmentLength = 0
        pageHead = []
        compressor?.abandon()
        compressor = nil
    }

    private func startCompressor(_ segment: SegmentName) {
        do {
            compressor = try SegmentCompressor(path: walDirectory + "/\(segment).lz4.tmp", contentSize: segmentSize.bytes, io: io)
        } catch {
            compressor = nil
            logger.warning(
                "cannot compress the segment as it arrives; it will be compressed at completion",
                metadata: [
                    "walship.segment": "\(segment)", "walship.error": "\(error)",
                ])
        }
    }

    private func compress(_ bytes: UnsafeRawBufferPointer, block: UnsafeRawBufferPointer? = nil) {
        guard let compressor else { return }
        do { try compressor.add(bytes, block: block) } catch {
            compressor.abandon()
            self.compressor = nil
            logger.warning(
                "stopped compressing the segment as it arrives; it will be compressed at completion",
                metadata: ["walship.error": "\(error)"])
        }
    }

    /// Validates `slice`, the segment's bytes from `offset`, in place: only a page header split between the
    /// previous chunk and this one is put together in a small buffer.
    private func validate(_ slice: UnsafeRawBufferPointer, at offset: Int) throws {
        let pageStart = offset / Int(WALPage.size) * Int(WALPage.size)
        let headerEnd = pageStart + WALPage.longHeaderLength
        var checked = 0
        if offset > pageStart && offset < headerEnd {
            checked = min(slice.count, headerEnd - offset)
            var head = pageHead
            head.append(contentsOf: UnsafeRawBufferPointer(rebasing: slice[0..<checked]))
            try head.withUnsafeBytes { try validatePages(window: $0, windowStart: pageStart, previousLength: offset) }
        }
        if checked < slice.count {
            try validatePages(
                window: UnsafeRawBufferPointer(rebasing: slice[checked...]), windowStart: offset + checked,
                previousLength: offset + checked)
        }
    }

    private func keepPageHead(_ slice: UnsafeRawBufferPointer, at offset: Int) {
        let pageStart = segmentLength / Int(WALPage.size) * Int(WALPage.size)
        if pageStart >= offset {
            let from = pageStart - offset
            pageHead = Array(UnsafeRawBufferPointer(rebasing: slice[from..<min(slice.count, from + WALPage.longHeaderLength)]))
        } else if pageHead.count < WALPage.longHeaderLength {
            pageHead.append(
                contentsOf: UnsafeRawBufferPointer(
                    rebasing: slice[0..<min(slice.count, WALPage.longHeaderLength - pageHead.count)]))
        }
    }

    private func validatePages(window: UnsafeRawBufferPointer, windowStart: Int, previousLength: Int) throws {
        var checker = validator!
        let failure: WALSegmentValidator.Failure?
        do throws(WALSegmentValidator.Failure) {
            try checker.validate(window: window, windowStart: windowStart, previousLength: previousLength)
            failure = nil
        } catch {
            failure = error
        }
        if let failure { throw SpoolError(.invalidWAL, "refused WAL that failed validation: \(failure)") }
        validator = checker
    }

    // MARK: - Recovery

    private func checkOrWriteSystemFile() throws {
        let expected = SystemConfiguration(systemIdentifier: systemIdentifier, segmentSize: segmentSize)
        if io.exists(directory + "/system.conf") {
            let found = try SystemConfiguration.read(directory: directory, io: io)
            guard found.describesSameSystem(as: expected) else {
                throw SpoolError(
                    .mismatch,
                    "\(directory)/system.conf says system \(found.systemIdentifier) with \(found.segmentSize) segments, expected \(systemIdentifier) with \(segmentSize)"
                )
            }
            // An older spool is taken up as it is; from now on it holds this format's files too.
            guard found.format < SystemConfiguration.currentFormat else { return }
        }
        try Array(expected.text.utf8).withUnsafeBytes {
            try io.writeAtomically($0, to: directory + "/system.conf", directory: directory)
        }
    }

    /// Finds where the spool ends after a restart or crash: leftover temp files are removed, a partial whose
    /// finished `.lz4` exists is dropped, as is an all-zero one (see `PartialSegment.neverWritten`), a full
    /// journal is finished, and a torn journal tail is cut.
    private func recover() throws {
        var completed: [SegmentName] = []
        var partials: [SegmentName] = []
        for name in try io.listDirectory(walDirectory) {
            if name.hasSuffix(".tmp") {
                try io.remove(walDirectory + "/" + name)
                logger.notice("removed unfinished temporary file", metadata: ["walship.file": "\(name)"])
            } else if name.hasSuffix(".lz4"), let seg = SegmentName(name.dropLast(4), segmentSize: segmentSize) {
                completed.append(seg)
            } else if name.hasSuffix(".partial"), let seg = SegmentName(name.dropLast(8), segmentSize: segmentSize) {
                partials.append(seg)
            }
        }
        for seg in partials where completed.contains(seg) {
            try io.remove(walDirectory + "/\(seg).partial")
            logger.notice("removed journal of a segment that was already completed", metadata: ["walship.segment": "\(seg)"])
        }
        partials.removeAll { completed.contains($0) }
        for seg in partials where try PartialSegment.neverWritten(path: walDirectory + "/\(seg).partial", io: io) {
            try io.remove(walDirectory + "/\(seg).partial")
            logger.notice(
                "removed a journal whose header was never written (a receiver stopped while creating it; it held no WAL)",
                metadata: ["walship.segment": "\(seg)"])
        }
        partials.removeAll { !io.exists(walDirectory + "/\($0).partial") }
        try io.syncDirectory(walDirectory)

        let end = SpoolEnd(completed: completed, journals: partials)
        var journal: PartialSegment.Contents?
        if let end, end.inJournal {
            journal = try readJournal(end.segment)
        } else if let last = end?.segment {
            positionBox.withLock { $0 = SpoolPosition(timeline: last.timeline, written: last.endLSN, durable: last.endLSN) }
        }
        // Before the journal is written anew: a damaged one stays as it is for a person to look at.
        try checkAcknowledgedWALIsPresent()
        if let end, let journal { try resume(end.segment, journal) }
        let pos = position
        logger.info(
            "spool opened",
            metadata: [
                "walship.timeline": "\(pos.timeline)", "walship.durable_lsn": "\(pos.durable)",
                "walship.completed_segments": "\(completed.count)",
            ])
    }

    /// Refuses a spool that ends below what it is known to have acknowledged: a journal cut short by damage
    /// looks like a torn tail, but WAL a sender was told is durable must never be dropped in silence.
    /// `primary.json` keeps a lower bound of the acknowledged position and its timeline; a spool on an older
    /// timeline than that lost the newer one. (After a fork a newer timeline may end below an older one's
    /// acknowledgement, so only the same timeline's are compared.)
    private func checkAcknowledgedWALIsPresent() throws {
        guard let record = try PrimaryProgressRecord.load(systemDirectory: directory, io: io),
            let acknowledged = record.acknowledgedLSN.flatMap(LSN.init), acknowledged.isValid
        else { return }
        let pos = position
        let lost: Bool
        if record.timeline == pos.timeline {
            lost = pos.durable < acknowledged
        } else {
            lost = record.timeline > pos.timeline
        }
        guard lost else { return }
        let found = pos.timeline == 0 ? "holds no WAL" : "ends at \(pos.durable) on timeline \(pos.timeline)"
        throw SpoolError(
            .acknowledgedWALMissing,
            "the spool of system \(systemIdentifier) \(found), but it had acknowledged WAL up to \(acknowledged) on timeline \(record.timeline) (primary.json): acknowledged WAL is missing from \(walDirectory), damaged or lost by the disk, and this system is not started (hint: keep a copy of the directory; docs/runbook.md, \"Acknowledged WAL missing\", says how to re-ship it from the primary's slot or re-seed)"
        )
    }

    /// Reads and validates the journal the spool ends in, and takes its end as the spool's position; nothing is
    /// written yet.
    private func readJournal(_ segment: SegmentName) throws -> PartialSegment.Contents {
        let path = walDirectory + "/\(segment).partial"
        let contents = try PartialSegment.read(path: path, io: io)
        guard contents.header.systemIdentifier == systemIdentifier, contents.header.segment == segment else {
            throw SpoolError(
                .corrupt,
                "\(path) belongs to \(contents.header.systemIdentifier)/\(contents.header.segment), not to this file name")
        }
        if contents.hadTornTail {
            logger.notice(
                "cut a torn tail from the in-progress segment (it was never acknowledged)",
                metadata: ["walship.segment": "\(segment)", "walship.valid_bytes": "\(contents.wal.count)"])
        }
        validator = WALSegmentValidator(
            systemIdentifier: systemIdentifier, segmentSize: segmentSize,
            timeline: segment.timeline, segmentStart: segment.startLSN)
        try contents.wal.withUnsafeBytes { try validatePages(window: $0, windowStart: 0, previousLength: 0) }
        let end = segment.startLSN.advanced(by: UInt64(contents.wal.count))
        positionBox.withLock { $0 = SpoolPosition(timeline: segment.timeline, written: end, durable: end) }
        return contents
    }

    /// Continues the journal `readJournal` read: written anew (see `PartialSegmentWriter(reopening:)`), then
    /// completed if it is whole.
    private func resume(_ segment: SegmentName, _ contents: PartialSegment.Contents) throws {
        let path = walDirectory + "/\(segment).partial"
        current = try PartialSegmentWriter(reopening: path, contents: contents, directory: walDirectory, io: io)
        resetSegmentState()
        segmentLength = contents.wal.count
        startCompressor(segment)
        contents.wal.withUnsafeBytes {
            keepPageHead($0, at: 0)
            compress($0)
        }
        if segmentLength == Int(segmentSize.bytes) { try finishSegment() }
    }
}

/// One segment's LZ4 frame, written to `NAME.lz4.tmp` piece by piece as the WAL arrives; `finish` fsyncs it
/// and renames it into place. A crash leaves only the `.tmp`, which recovery removes.
final class SegmentCompressor {
    let path: String
    private let io: FileIO
    private var fd: Int32
    private let writer: LZ4.BlockFrameWriter
    private var length = 0

    init(path: String, contentSize: UInt64, io: FileIO) throws {
        self.path = path
        self.io = io
        fd = try io.open(path, O_WRONLY | O_CREAT | O_TRUNC)
        writer = LZ4.BlockFrameWriter(contentSize: contentSize)
        do { try write(writer.begin()) } catch {
            abandon()
            throw error
        }
    }

    deinit { if fd >= 0 { io.close(fd) } }

    func add(_ bytes: UnsafeRawBufferPointer, block: UnsafeRawBufferPointer?) throws {
        if let block { try write(writer.add(bytes, compressedBlock: block)) } else { try write(writer.add(bytes)) }
    }

    /// Ends the frame, makes it durable and renames it to `completedPath` (the directory is synced by the caller).
    func finish(as completedPath: String) throws {
        try write(writer.end())
        try io.syncFile(fd, path: path, retry: .rewrittenOnRetry)
        io.close(fd)
        fd = -1
        try io.rename(path, to: completedPath)
    }

    /// Drops the unfinished frame.
    func abandon() {
        if fd >= 0 { io.close(fd) }
        fd = -1
        try? io.remove(path)
    }

    private func write(_ bytes: [UInt8]) throws {
        guard !bytes.isEmpty else { return }
        try bytes.withUnsafeBytes { try io.pwriteAll(fd, $0, at: length, path: path) }
        length += bytes.count
    }
}

/// Boxed: a closure kept in a dictionary behind a lock and called from another thread.
final class DurableObserver: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

import NIOCore
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// What BASE_BACKUP produces, in order.
public enum BackupEvent: Sendable {
    case started(start: LSN, timeline: TimeLineID, estimatedBytes: UInt64)
    case archiveData(ByteBuffer)
    case manifestData(ByteBuffer)
    /// Bytes the server has sent so far (its own progress count).
    case progress(UInt64)
    case finished(stop: LSN, timeline: TimeLineID)
}

public typealias BackupEvents = NIOThrowingAsyncSequenceProducer<
    BackupEvent, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, StreamGate
>

public struct BackupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ReplicationSession {
    /// Runs BASE_BACKUP on the connection's thread without WAL (the stream delivers it) and hands the archive
    /// of the data directory and the manifest on in chunks of at most `chunkBytes`, pausing while the consumer
    /// is behind. Extra tablespaces are refused: a DR copy restored from this backup would lack them.
    public func baseBackup(label: String, gate: StreamGate, source: BackupEvents.Source, chunkBytes: Int = 1 << 20) async throws {
        try await withTaskCancellationHandler {
            try await owner.run { connection in
                do {
                    try Self.runBaseBackup(
                        connection.required(), label: label, gate: gate, source: source, chunkBytes: chunkBytes)
                    source.finish()
                } catch {
                    source.finish(error)
                    throw error
                }
            }
        } onCancel: {
            gate.requestStop()
        }
    }

    private static func runBaseBackup(
        _ conn: PGConnection, label: String, gate: StreamGate, source: BackupEvents.Source,
        chunkBytes: Int
    ) throws {
        func emit(_ event: BackupEvent) throws {
            let generation = gate.state.withLock { $0.demandGeneration }
            if case .stopProducing = source.yield(event) {
                gate.state.withLock { if $0.demandGeneration == generation { $0.demand = false } }
            }
            // Wait for the consumer; the server just waits on its side (no timeout applies to a backup sender).
            while true {
                let (demand, stop) = gate.state.withLock { ($0.demand, $0.stopRequested) }
                if stop { throw CancellationError() }
                if demand { return }
                var fd = pollfd(fd: gate.wakeRead, events: Int16(POLLIN), revents: 0)
                _ = poll(&fd, 1, 1000)
                gate.drainWakeups(fd.revents)
            }
        }

        let escaped = label.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "''")
        try conn.send("BASE_BACKUP ( LABEL '\(escaped)', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes' )")
        guard case .rows(let startRows) = try conn.nextResult(), let start = startRows.first,
            let startLSN = start.first.flatMap({ $0.flatMap { LSN($0) } }),
            let tli = start.dropFirst().first.flatMap({ $0.flatMap { UInt32($0) } })
        else { throw BackupError("BASE_BACKUP did not report its start position") }
        guard case .rows(let tablespaces) = try conn.nextResult() else {
            throw BackupError("BASE_BACKUP did not list tablespaces")
        }
        guard tablespaces.allSatisfy({ $0.first.flatMap { $0 } == nil }) else {
            throw BackupError(
                "the primary has tablespaces outside the data directory; walship backs up the data directory only (hint: move them into pg_default, or back them up separately)"
            )
        }
        let estimatedKB = tablespaces.compactMap { $0.count > 2 ? $0[2].flatMap { UInt64($0) } : nil }.reduce(0, +)
        try emit(.started(start: startLSN, timeline: tli, estimatedBytes: estimatedKB * 1024))
        guard case .copyOut = try conn.nextResult() else { throw BackupError("BASE_BACKUP did not start sending data") }

        var inManifest = false
        var pending = ByteBufferAllocator().buffer(capacity: chunkBytes)
        func flush() throws {
            guard pending.readableBytes > 0 else { return }
            let chunk = pending
            pending = ByteBufferAllocator().buffer(capacity: chunkBytes)
            try emit(inManifest ? .manifestData(chunk) : .archiveData(chunk))
        }
        while let message = try conn.readCopyOut() {
            guard let type = message.first else { continue }
            switch type {
            case UInt8(ascii: "n"):
                // A new archive: only base.tar, the main data directory, is expected (tablespaces were refused).
                try flush()
            case UInt8(ascii: "d"):
                var offset = 1
                while offset < message.count {
                    let n = min(message.count - offset, chunkBytes - pending.readableBytes)
                    pending.writeBytes(message[offset..<offset + n])
                    offset += n
                    if pending.readableBytes >= chunkBytes { try flush() }
                }
            case UInt8(ascii: "p"):
                guard message.count == 9 else { throw BackupError("malformed progress message from BASE_BACKUP") }
                var done: UInt64 = 0
                for byte in message[1...] { done = done << 8 | UInt64(byte) }
                try emit(.progress(done))
            case UInt8(ascii: "m"):
                try flush()
                inManifest = true
            default:
                throw BackupError("unexpected message type 0x\(String(type, radix: 16)) in BASE_BACKUP's data")
            }
        }
        try flush()
        var stop: (LSN, TimeLineID)?
        while true {
            switch try conn.nextResult() {
            case .rows(let rows):
                if let row = rows.first, let lsn = row.first.flatMap({ $0.flatMap { LSN($0) } }),
                    let t = row.dropFirst().first.flatMap({ $0.flatMap { UInt32($0) } })
                {
                    stop = (lsn, t)
                }
            case .commandOK, .copyOut: continue
            case .done:
                guard let stop else { throw BackupError("BASE_BACKUP did not report its end position") }
                try emit(.finished(stop: stop.0, timeline: stop.1))
                return
            }
        }
    }
}

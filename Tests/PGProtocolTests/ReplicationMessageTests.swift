import Testing
import WALCore

@testable import PGProtocol

@Suite struct ReplicationMessageTests {
    func decode(_ bytes: [UInt8]) throws -> ReplicationMessage {
        try bytes.withUnsafeBytes { try ReplicationMessage.decode($0) }
    }

    @Test func decodesXLogData() throws {
        let header = ReplicationMessage.encodeXLogDataHeader(
            dataStart: LSN("0/3000000")!, walEnd: LSN("0/3B431C8")!,
            sendTime: PostgresTimestamp(rawValue: 42))
        #expect(header.count == 25)
        let message = try decode(header + [1, 2, 3])
        guard case .xLogData(let x) = message else {
            Issue.record("not XLogData")
            return
        }
        #expect(x.dataStart == LSN("0/3000000")!)
        #expect(x.walEnd == LSN("0/3B431C8")!)
        #expect(x.sendTime.rawValue == 42)
        #expect(x.dataOffset == 25 && x.dataLength == 3)
    }

    @Test func decodesKeepaliveOfExactlyEighteenBytes() throws {
        let bytes = ReplicationMessage.encodeKeepalive(
            .init(
                walEnd: LSN(0x1234), sendTime: PostgresTimestamp(rawValue: -1),
                replyRequested: true))
        #expect(bytes.count == 18)
        #expect(
            try decode(bytes)
                == .keepalive(.init(walEnd: LSN(0x1234), sendTime: PostgresTimestamp(rawValue: -1), replyRequested: true)))
        #expect(throws: ReplicationMessage.DecodeError.wrongLength(type: UInt8(ascii: "k"), length: 19, expected: 18)) {
            try decode(bytes + [0])
        }
    }

    @Test func rejectsTruncatedAndUnknown() {
        #expect(throws: ReplicationMessage.DecodeError.empty) { try decode([]) }
        #expect(throws: ReplicationMessage.DecodeError.tooShort(type: UInt8(ascii: "w"), length: 24, minimum: 25)) {
            try decode([UInt8(ascii: "w")] + [UInt8](repeating: 0, count: 23))
        }
        #expect(throws: ReplicationMessage.DecodeError.unknownType(UInt8(ascii: "x"))) { try decode([UInt8(ascii: "x"), 0]) }
    }

    @Test func standbyStatusGoldenBytes() throws {
        let update = StandbyStatusUpdate(
            write: LSN(0x0102030405060708), flush: LSN(1), apply: LSN(0),
            sendTime: PostgresTimestamp(rawValue: 2), replyRequested: true)
        let bytes = update.encoded()
        #expect(bytes.count == 34)
        #expect(Array(bytes[0..<9]) == [0x72, 1, 2, 3, 4, 5, 6, 7, 8])
        #expect(bytes[33] == 1)
        #expect(try bytes.withUnsafeBytes { try StandbyStatusUpdate.decode($0) } == update)
        #expect(throws: ReplicationMessage.DecodeError.self) {
            try Array(bytes.dropLast()).withUnsafeBytes { try StandbyStatusUpdate.decode($0) }
        }
    }
}

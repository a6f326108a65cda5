import NIOCore
import Testing
import WALCore

@testable import WalSenderServer

@Suite struct FrontendDecoderTests {
    func startupPacket(_ parameters: [(String, String)], code: UInt32 = 0x0003_0000) -> ByteBuffer {
        var body = ByteBuffer()
        body.writeInteger(code)
        for (k, v) in parameters {
            body.writeNullTerminatedString(k)
            body.writeNullTerminatedString(v)
        }
        body.writeInteger(UInt8(0))
        var out = ByteBuffer()
        out.writeInteger(UInt32(body.readableBytes + 4))
        out.writeBuffer(&body)
        return out
    }

    func decodeAll(_ buffer: ByteBuffer) throws -> [FrontendMessage] {
        var buffer = buffer
        var decoder = FrontendMessageDecoder()
        var out: [FrontendMessage] = []
        while let m = try decoder.decode(buffer: &buffer) { out.append(m) }
        return out
    }

    @Test func negotiationThenStartupThenQueries() throws {
        var stream = ByteBuffer()
        stream.writeInteger(UInt32(8))
        stream.writeInteger(UInt32(80_877_103))  // SSLRequest
        stream.writeInteger(UInt32(8))
        stream.writeInteger(UInt32(80_877_104))  // GSSENCRequest
        var startup = startupPacket([("user", "postgres"), ("replication", "true"), ("application_name", "dr")])
        stream.writeBuffer(&startup)
        Backend.message("Q", into: &stream) { $0.writeNullTerminatedString("IDENTIFY_SYSTEM") }
        Backend.message("d", into: &stream) { $0.writeBytes([0x72, 1, 2]) }
        Backend.message("c", into: &stream) { _ in }
        Backend.message("X", into: &stream) { _ in }
        #expect(
            try decodeAll(stream) == [
                .sslRequest, .gssEncryptionRequest,
                .startup(parameters: ["user": "postgres", "replication": "true", "application_name": "dr"]),
                .query("IDENTIFY_SYSTEM"), .copyData(ByteBuffer(bytes: [0x72, 1, 2])), .copyDone, .terminate,
            ])
    }

    @Test func partialInputWaits() throws {
        let startup = startupPacket([("user", "u")])
        var decoder = FrontendMessageDecoder()
        var first = startup.getSlice(at: 0, length: 6)!
        #expect(try decoder.decode(buffer: &first) == nil)
    }

    @Test func limitsAndGarbageAreErrors() {
        var huge = ByteBuffer()
        huge.writeInteger(UInt32(1_000_000))
        #expect(throws: FrontendDecodeError.badStartupLength(1_000_000)) { try decodeAll(huge) }
        #expect(throws: FrontendDecodeError.unsupportedProtocol(0x0002_0000)) {
            try decodeAll(startupPacket([], code: 0x0002_0000))
        }
        var afterStartup = startupPacket([("user", "u")])
        afterStartup.writeInteger(UInt8(ascii: "Q"))
        afterStartup.writeInteger(UInt32(2))
        #expect(throws: FrontendDecodeError.badMessageLength(type: UInt8(ascii: "Q"), length: 2)) { try decodeAll(afterStartup) }
        var unknown = startupPacket([("user", "u")])
        Backend.message("B", into: &unknown) { _ in }
        #expect(throws: FrontendDecodeError.unknownMessage(UInt8(ascii: "B"))) { try decodeAll(unknown) }
        var unterminated = startupPacket([("user", "u")])
        Backend.message("Q", into: &unterminated) { $0.writeString("no terminator") }
        #expect(throws: FrontendDecodeError.self) { try decodeAll(unterminated) }
    }
}

@Suite struct ReplicationCommandTests {
    @Test func whatAStockStandbySends() throws {
        #expect(try ReplicationCommand.parse("IDENTIFY_SYSTEM") == .identifySystem)
        #expect(try ReplicationCommand.parse("TIMELINE_HISTORY 2") == .timelineHistory(2))
        #expect(
            try ReplicationCommand.parse("START_REPLICATION 0/5000000 TIMELINE 1")
                == .startReplication(slot: nil, start: LSN("0/5000000")!, timeline: 1))
        #expect(
            try ReplicationCommand.parse("START_REPLICATION SLOT \"dr_Slot\" 0/5000000 TIMELINE 2")
                == .startReplication(slot: "dr_Slot", start: LSN("0/5000000")!, timeline: 2))
        #expect(
            try ReplicationCommand.parse("start_replication slot dr physical 1/A0000000;")
                == .startReplication(slot: "dr", start: LSN("1/A0000000")!, timeline: nil))
        #expect(try ReplicationCommand.parse("SHOW wal_segment_size") == .show("wal_segment_size"))
        #expect(try ReplicationCommand.parse("READ_REPLICATION_SLOT \"x\"") == .readReplicationSlot("x"))
    }

    @Test(arguments: [
        "", "SELECT 1", "START_REPLICATION", "START_REPLICATION SLOT x LOGICAL 0/0", "START_REPLICATION 0/0 TIMELINE",
        "START_REPLICATION 0/0 extra", "TIMELINE_HISTORY 0", "TIMELINE_HISTORY x", "IDENTIFY_SYSTEM now",
        "START_REPLICATION SLOT \"unterminated 0/0",
    ])
    func everythingElseIsASyntaxError(_ text: String) {
        #expect(throws: ReplicationCommand.ParseError.self) { try ReplicationCommand.parse(text) }
    }
}

@Suite struct BackendMessageTests {
    @Test func copyBothResponseAndErrorsAreShapedLikePostgres() {
        var out = ByteBuffer()
        Backend.copyBothResponse(&out)
        #expect(Array(out.readableBytesView) == [UInt8(ascii: "W"), 0, 0, 0, 7, 0, 0, 0])
        var error = ByteBuffer()
        Backend.error(code: "58P01", message: "gone", &error)
        #expect(error.readableBytesView.first == UInt8(ascii: "E"))
        #expect(error.readableBytesView.last == 0)
        var result = ByteBuffer()
        Backend.result(columns: [("a", 25)], rows: [[nil], [[0x41]]], tag: "SHOW", &result)
        // RowDescription, two DataRows (NULL is length -1), CommandComplete.
        #expect(result.readableBytesView.filter { $0 == UInt8(ascii: "D") }.count >= 2)
    }

    @Test func passwordsCompareInConstantTime() {
        #expect(constantTimeEqual(Array("secret".utf8), Array("secret".utf8)))
        #expect(!constantTimeEqual(Array("secret".utf8), Array("secreT".utf8)))
        #expect(!constantTimeEqual(Array("secret".utf8), Array("secret2".utf8)))
        #expect(!constantTimeEqual([], Array("x".utf8)))
    }
}

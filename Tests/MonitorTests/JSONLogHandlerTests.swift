import Foundation
import Logging
import Synchronization
import Testing

@testable import Monitor

@Suite struct JSONLogHandlerTests {
    @Test func aLineIsOneJSONObjectWithEveryMetadataKeyAField() throws {
        let line = JSONLogHandler.line(
            date: Date(timeIntervalSince1970: 1_796_660_000.25), level: .notice, label: "walship.receive",
            message: "sender connected",
            metadata: [
                "walship.system": "7716632712357935796", "walship.timeline": .stringConvertible(2),
                "walship.sources": .array(["a", "b"]), "walship.peer": .dictionary(["host": "127.0.0.1"]),
            ], source: "Receiver")
        #expect(!line.contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["level"] as? String == "notice")
        #expect(object["logger"] as? String == "walship.receive")
        #expect(object["message"] as? String == "sender connected")
        #expect(object["source"] as? String == "Receiver")
        #expect(object["time"] as? String == "2026-12-07T16:13:20.250Z")
        #expect(object["walship.system"] as? String == "7716632712357935796")
        #expect(object["walship.timeline"] as? String == "2")
        #expect(object["walship.sources"] as? [String] == ["a", "b"])
        #expect((object["walship.peer"] as? [String: String])?["host"] == "127.0.0.1")
        // A message with a newline and quotes stays one line of valid JSON.
        let awkward = JSONLogHandler.line(
            date: Date(), level: .error, label: "x", message: "server closed the connection\n\t\"unexpectedly\"", metadata: [:],
            source: "S")
        #expect(!awkward.contains("\n"))
        #expect(
            (try JSONSerialization.jsonObject(with: Data(awkward.utf8)) as? [String: Any])?["message"] as? String
                == "server closed the connection\n\t\"unexpectedly\"")
    }

    @Test func theHandlerHonoursItsLevelAndMergesMetadata() {
        let lines = Mutex<[String]>([])
        var handler = JSONLogHandler(label: "walship.send") { line in lines.withLock { $0.append(line) } }
        handler.logLevel = .notice
        handler[metadataKey: "walship.site"] = "hospital"
        var logger = Logger(label: "walship.send") { _ in handler }
        logger.logLevel = .notice
        logger.info("not written")
        logger.notice("written", metadata: ["walship.slot": "walship"])
        let written = lines.withLock { $0 }
        #expect(written.count == 1)
        #expect(written.first?.contains(#""walship.site":"hospital""#) == true)
        #expect(written.first?.contains(#""walship.slot":"walship""#) == true)
    }
}

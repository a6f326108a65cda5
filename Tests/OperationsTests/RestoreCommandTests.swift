import Testing

@testable import Operations

/// restore_command is a shell command line PostgreSQL runs as it is: every word walship puts in it must reach
/// walship restore-wal unchanged, whatever the paths hold.
@Suite struct RestoreCommandTests {
    @Test func plainWordsStayAsTheyAreAndOthersAreQuoted() {
        let command = restoreWALCommand(
            walship: "/usr/local/bin/walship",
            arguments: [
                "--system", "7301234567890", "--archive", "s3://dr-archive/walship", "--archive-endpoint",
                "https://s3.hospital.example:9000", "--archive-credentials", "/etc/wal ship/it's", "--archive-cache", "",
            ])
        #expect(
            command
                == "/usr/local/bin/walship restore-wal --system 7301234567890 --archive s3://dr-archive/walship --archive-endpoint https://s3.hospital.example:9000 --archive-credentials '/etc/wal ship/it'\\''s' --archive-cache '' %f %p"
        )
    }

    @Test func whatTheShellWouldExpandIsQuoted() {
        for word in ["$HOME", "a;b", "`x`", "a*", "~root", "a b", "a\"b", "%f"] {
            #expect(shellWord(word).hasPrefix("'"), "\(word)")
        }
        for word in ["/var/lib/walship", "s3://b/p", "us-east-1", "user@host", "a=b,c+d"] {
            #expect(shellWord(word) == word)
        }
    }
}

import "hash"

rule PE_Process_Injection_Imports : pe injection
{
    meta:
        description = "PE importing the classic remote-thread injection set"
        severity = 3
    strings:
        $a = "VirtualAllocEx" ascii
        $b = "WriteProcessMemory" ascii
        $c = "CreateRemoteThread" ascii
        $d = "OpenProcess" ascii
    condition:
        uint16(0) == 0x5A4D and all of them
}

rule ELF_Reverse_Shell_Strings : elf backdoor
{
    meta:
        description = "ELF binary with reverse-shell strings"
        severity = 3
    strings:
        $sh = "/bin/sh" ascii
        $dup = "dup2" ascii
        $sock = "socket" ascii
        $conn = "connect" ascii
        $i = "-i" ascii fullword
    condition:
        uint32(0) == 0x464C457F and filesize < 5MB and all of them
}

rule Empty_Or_Tiny_Sample : info
{
    meta:
        description = "Sample of at most 16 bytes: rarely useful for analysis"
        severity = 0
    condition:
        filesize <= 16 and hash.md5(0, filesize) != ""
}

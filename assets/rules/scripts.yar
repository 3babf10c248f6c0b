rule PowerShell_Encoded_Command : script downloader
{
    meta:
        description = "PowerShell started with an encoded command and a hidden window"
        severity = 3
    strings:
        $ps = "powershell" nocase
        $enc = /-e(nc|ncodedcommand)?\s+[A-Za-z0-9+\/=]{40,}/ nocase
        $hidden = /-w(indowstyle)?\s+hidden/ nocase
    condition:
        $ps and $enc and filesize < 5MB and (#enc > 0 or $hidden)
}

rule Script_Download_And_Execute : script downloader
{
    meta:
        description = "Script that downloads a payload and runs it"
        severity = 3
    strings:
        $dl1 = "DownloadString" nocase
        $dl2 = "DownloadFile" nocase
        $dl3 = "Invoke-WebRequest" nocase
        $dl4 = /curl\s+(-[a-zA-Z]+\s+)*https?:\/\// nocase
        $dl5 = /wget\s+(-[a-zA-Z]+\s+)*https?:\/\// nocase
        $ex1 = "IEX" fullword
        $ex2 = "Invoke-Expression" nocase
        $ex3 = /\|\s*(ba)?sh\b/
        $ex4 = "chmod +x" nocase
    condition:
        filesize < 2MB and any of ($dl*) and any of ($ex*)
}

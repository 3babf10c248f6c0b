rule Office_Macro_AutoExec : document macro
{
    meta:
        description = "OLE or OOXML document with a VBA project that runs on open"
        severity = 3
    strings:
        $vba1 = "vbaProject.bin" ascii
        $vba2 = "_VBA_PROJECT" wide ascii
        $auto1 = "AutoOpen" nocase ascii wide
        $auto2 = "Document_Open" nocase ascii wide
        $auto3 = "Workbook_Open" nocase ascii wide
        $shell1 = "WScript.Shell" nocase ascii wide
        $shell2 = "Shell(" nocase ascii wide
    condition:
        (uint32(0) == 0xE011CFD0 or uint32(0) == 0x04034B50)
        and any of ($vba*) and any of ($auto*) and any of ($shell*)
}

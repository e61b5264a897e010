//! The page's static assets: the stylesheet (served at `/device/style.css`, so the CSP can
//! forbid inline styles) and the icon (`/device/icon.svg`, also `/favicon.ico`).

/// The stylesheet: one column that fits a phone, the same column centred on a desktop.
pub const STYLESHEET: &str = r#"
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2430;background:#eef1f5}
header{background:#1c2a3a;color:#fff;padding:.75rem 1rem;min-height:3.625rem;display:flex;align-items:center;justify-content:space-between;gap:1rem;flex-wrap:wrap}
header .brand{font-weight:700;letter-spacing:.02em}
header form{margin:0;display:flex;align-items:center;gap:.5rem;flex-wrap:wrap}
header .who{font-size:.875rem;color:#e3e8ee}
main{max-width:30rem;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:1.5rem}
h1{font-size:1.375rem;margin:0 0 .75rem}
h2{font-size:1rem;margin:0 0 .25rem}
p{margin:.5rem 0}
label{display:block;font-weight:600;margin:1rem 0 .25rem}
input[type=text],input[type=password]{width:100%;font-size:1.125rem;padding:.7rem .8rem;border:1px solid #7c8796;border-radius:8px;background:#fff;color:#1c2430}
input[aria-invalid=true]{border:2px solid #b42318}
input:focus,button:focus,a:focus{outline:3px solid #1f6feb;outline-offset:2px}
input.code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.5rem;letter-spacing:.15em;text-transform:uppercase;text-align:center}
button{font:inherit;font-weight:600;cursor:pointer;border-radius:8px;padding:.75rem 1rem;border:2px solid transparent}
.primary{background:#1f6feb;color:#fff;width:100%;margin-top:1.25rem}
.approve{background:#1a7f37;color:#fff}
.deny{background:#fff;color:#b42318;border-color:#b42318}
.link{background:none;color:#fff;border:1px solid #c5ccd6;padding:.35rem .7rem;font-size:.875rem}
.choices{display:flex;gap:.75rem;margin-top:1.25rem}
.choices button{flex:1}
.notice{border-radius:8px;padding:.75rem 1rem;margin:0 0 1rem}
.notice:focus{outline:3px solid #1f6feb}
.error{background:#fdecea;color:#8a1c12;border:1px solid #f5c2bd}
.info{background:#e8f1fd;color:#123e73;border:1px solid #bcd4f6}
.success{background:#e7f5ec;color:#14532d;border:1px solid #b7e0c4}
.warning{background:#fff4e0;color:#5b3a00;border:1px solid #f0c37a;border-radius:8px;padding:.75rem 1rem;margin:1.25rem 0 0}
.acts{background:#eef4ff;border:1px solid #bcd4f6;border-radius:8px;padding:.75rem 1rem;margin:1rem 0;font-size:1.125rem}
.acts strong{font-size:1.25rem;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem;margin:1rem 0}
dt{color:#4d5866}
dd{margin:0;font-weight:600;overflow-wrap:break-word;min-width:0}
.scopes{margin:0;padding-left:1.1rem}
.scopes li{margin:0 0 .25rem}
.scopes code,.id{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.8125rem;font-weight:400;color:#4d5866;overflow-wrap:anywhere}
.codebox{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.75rem;letter-spacing:.15em;text-align:center;background:#f3f5f8;border-radius:8px;padding:.5rem;margin:.75rem 0}
.small{font-size:.875rem;color:#4d5866}
a{color:#1a5fd0}
@media (max-width:420px){main{margin-top:1rem}.card{padding:1.1rem}.choices{flex-direction:column}}
"#;

/// A small icon (a check mark in a shield), so browsers asking for one get an image, not JSON.
pub const ICON_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><path fill="#1c2a3a" d="M16 2 4 7v8c0 7.5 5.1 13.3 12 15 6.9-1.7 12-7.5 12-15V7z"/><path fill="none" stroke="#fff" stroke-width="3" stroke-linecap="round" stroke-linejoin="round" d="m10 16 4.5 4.5L22 12"/></svg>"##;

"""People in the loop: samples and rankings (`feedback`), the ranking and writing web page and its server
(`web_label`, `web/`), demonstrations people write, work shared by several people (`offers`), raters' agreement."""

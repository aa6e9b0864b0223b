"""Cities and their continent: the lexicon of the `continents` source (iclscope.data.synthetic).

Well-known cities of four continents, written out by hand in plain ASCII spelling: Europe, Asia,
Africa and America (North, Central and South America with the Caribbean). Every city lies wholly
on its continent: where a country spans two continents, the cities of the part whose continent is
disputed or differs are left out (all of Turkey, the Caucasus and Cyprus; Russia east of the Urals;
Egypt's Sinai), and so is the Pacific (Hawaii, Oceania). A name stands for the best-known city of
that name (London, not London in Ontario); a name that well-known cities on two continents share
is left out (Tripoli, Santiago, Valencia, Cordoba, Victoria, Kingston, Georgetown, Alexandria,
Memphis, Halifax, Hamilton, Odessa, Saint Petersburg, ...), and so is a name more often read as a
common English word or a person (Nice, Split, Reading, Tours, Male, Buffalo, Phoenix, Columbus,
Charlotte, Austin, Regina, Salvador, ...). No city is listed twice. A city's continent is the
known answer of the `continents` classification task (docs/methods.md §5.1); the lists are data,
so an edit reruns every job that reads them.
"""

from __future__ import annotations


def _names(text: str) -> list[str]:
    """Comma-separated names (a name may hold spaces: Addis Ababa) -> a list, in order."""
    return [" ".join(n.split()) for n in text.split(",") if n.strip()]


EUROPE = _names("""
London, Liverpool, Leeds, Sheffield, Bristol, Glasgow, Edinburgh, Cardiff, Belfast, Nottingham,
Leicester, Coventry, Southampton, Aberdeen, Dundee, Swansea, Oxford, Norwich, Exeter, Bradford,
Sunderland, Inverness, Dublin, Galway, Limerick, Paris, Marseille, Lyon, Toulouse, Nantes,
Strasbourg, Montpellier, Bordeaux, Lille, Rennes, Reims, Toulon, Grenoble, Dijon, Nimes, Avignon,
Cannes, Limoges, Amiens, Perpignan, Rouen, Caen, Calais, Berlin, Hamburg, Munich, Cologne,
Frankfurt, Stuttgart, Dusseldorf, Dortmund, Essen, Leipzig, Bremen, Dresden, Nuremberg, Duisburg,
Bochum, Wuppertal, Bielefeld, Bonn, Mannheim, Karlsruhe, Wiesbaden, Augsburg, Aachen, Kiel,
Freiburg, Heidelberg, Rostock, Potsdam, Mainz, Regensburg, Lubeck, Amsterdam, Rotterdam, Utrecht,
Eindhoven, Groningen, Maastricht, Leiden, Delft, Brussels, Antwerp, Ghent, Bruges, Liege, Namur,
Zurich, Geneva, Basel, Bern, Lausanne, Lucerne, Vienna, Salzburg, Innsbruck, Graz, Linz, Rome,
Milan, Naples, Turin, Palermo, Genoa, Bologna, Venice, Verona, Bari, Catania, Messina, Trieste,
Padua, Parma, Pisa, Siena, Modena, Brescia, Bergamo, Perugia, Cagliari, Madrid, Barcelona, Seville,
Zaragoza, Malaga, Bilbao, Granada, Alicante, Murcia, Valladolid, Vigo, Cadiz, Lisbon, Porto, Braga,
Coimbra, Stockholm, Gothenburg, Malmo, Uppsala, Oslo, Bergen, Trondheim, Stavanger, Copenhagen,
Aarhus, Odense, Helsinki, Tampere, Turku, Reykjavik, Warsaw, Krakow, Lodz, Wroclaw, Poznan, Gdansk,
Szczecin, Lublin, Prague, Brno, Ostrava, Bratislava, Kosice, Budapest, Debrecen, Szeged, Bucharest,
Cluj, Timisoara, Iasi, Constanta, Plovdiv, Varna, Belgrade, Novi Sad, Zagreb, Dubrovnik, Ljubljana,
Sarajevo, Mostar, Skopje, Tirana, Podgorica, Athens, Thessaloniki, Patras, Heraklion, Chisinau,
Kyiv, Kharkiv, Lviv, Dnipro, Minsk, Vilnius, Kaunas, Riga, Tallinn, Moscow, Kazan, Samara,
Volgograd, Voronezh, Nizhny Novgorod, Valletta
""")


ASIA = _names("""
Beijing, Shanghai, Guangzhou, Shenzhen, Chengdu, Chongqing, Wuhan, Xian, Hangzhou, Nanjing, Tianjin,
Suzhou, Harbin, Shenyang, Dalian, Qingdao, Kunming, Changsha, Zhengzhou, Jinan, Fuzhou, Xiamen,
Hefei, Nanning, Lhasa, Urumqi, Lanzhou, Taiyuan, Guiyang, Ningbo, Wenzhou, Dongguan, Foshan, Hong
Kong, Macau, Taipei, Kaohsiung, Taichung, Tainan, Tokyo, Osaka, Kyoto, Yokohama, Nagoya, Sapporo,
Kobe, Fukuoka, Hiroshima, Sendai, Nagasaki, Nara, Kawasaki, Okayama, Kumamoto, Kagoshima, Seoul,
Busan, Incheon, Daegu, Daejeon, Gwangju, Ulsan, Pyongyang, Ulaanbaatar, Bangkok, Chiang Mai, Phuket,
Pattaya, Hanoi, Haiphong, Da Nang, Ho Chi Minh City, Vientiane, Phnom Penh, Yangon, Mandalay,
Naypyidaw, Kuala Lumpur, Malacca, Jakarta, Surabaya, Bandung, Medan, Semarang, Yogyakarta, Makassar,
Denpasar, Palembang, Manila, Davao, Quezon City, Dili, Delhi, Mumbai, Kolkata, Chennai, Bangalore,
Hyderabad, Ahmedabad, Pune, Jaipur, Lucknow, Kanpur, Nagpur, Surat, Indore, Bhopal, Patna, Agra,
Varanasi, Amritsar, Chandigarh, Kochi, Mysore, Coimbatore, Madurai, Karachi, Lahore, Islamabad,
Rawalpindi, Peshawar, Quetta, Multan, Faisalabad, Dhaka, Chittagong, Kathmandu, Pokhara, Thimphu,
Colombo, Kandy, Tashkent, Samarkand, Bukhara, Almaty, Astana, Bishkek, Dushanbe, Ashgabat, Kabul,
Kandahar, Herat, Tehran, Isfahan, Shiraz, Tabriz, Mashhad, Baghdad, Basra, Mosul, Erbil, Damascus,
Aleppo, Homs, Beirut, Amman, Jerusalem, Haifa, Jeddah, Riyadh, Mecca, Dammam, Dubai, Abu Dhabi,
Sharjah, Doha, Manama, Muscat, Sanaa, Aden
""")


AFRICA = _names("""
Cairo, Giza, Luxor, Aswan, Port Said, Ismailia, Mansoura, Tanta, Zagazig, Asyut, Hurghada, Damietta,
Minya, Sohag, Faiyum, Benghazi, Misrata, Tunis, Sfax, Sousse, Kairouan, Bizerte, Gabes, Algiers,
Oran, Annaba, Blida, Setif, Batna, Tlemcen, Bejaia, Biskra, Ghardaia, Casablanca, Rabat, Marrakesh,
Tangier, Agadir, Meknes, Oujda, Tetouan, Essaouira, Kenitra, Nador, Nouakchott, Dakar, Thies, Touba,
Ziguinchor, Kaolack, Banjul, Bissau, Conakry, Freetown, Monrovia, Abidjan, Yamoussoukro, Bouake,
Bamako, Timbuktu, Gao, Mopti, Ouagadougou, Bobo-Dioulasso, Niamey, Zinder, Agadez, Maradi, Accra,
Kumasi, Takoradi, Cape Coast, Lome, Cotonou, Porto-Novo, Lagos, Kano, Ibadan, Abuja, Kaduna, Port
Harcourt, Enugu, Onitsha, Maiduguri, Zaria, Ilorin, Sokoto, Calabar, Warri, Abeokuta, Owerri, Akure,
Uyo, Bauchi, Katsina, Yola, Yaounde, Douala, Garoua, Bamenda, Bafoussam, Maroua, Ndjamena, Bangui,
Libreville, Brazzaville, Pointe-Noire, Kinshasa, Lubumbashi, Kisangani, Goma, Bukavu, Kananga,
Mbuji-Mayi, Matadi, Kolwezi, Likasi, Luanda, Huambo, Benguela, Lobito, Lubango, Khartoum, Omdurman,
Port Sudan, Kassala, Nyala, Juba, Addis Ababa, Dire Dawa, Mekelle, Gondar, Bahir Dar, Hawassa,
Harar, Jimma, Adama, Asmara, Mogadishu, Hargeisa, Kismayo, Berbera, Nairobi, Mombasa, Kisumu,
Nakuru, Eldoret, Malindi, Thika, Garissa, Kampala, Entebbe, Gulu, Jinja, Mbarara, Kigali, Bujumbura,
Gitega, Dar es Salaam, Dodoma, Arusha, Mwanza, Tanga, Mbeya, Moshi, Morogoro, Tabora, Lilongwe,
Blantyre, Zomba, Mzuzu, Lusaka, Ndola, Kitwe, Kabwe, Chipata, Harare, Bulawayo, Mutare, Gweru,
Masvingo, Maputo, Beira, Nampula, Quelimane, Tete, Antananarivo, Toamasina, Toliara, Mahajanga,
Fianarantsoa, Gaborone, Francistown, Windhoek, Walvis Bay, Johannesburg, Cape Town, Durban,
Pretoria, Bloemfontein, Port Elizabeth, Polokwane, Pietermaritzburg, Stellenbosch, Rustenburg,
Nelspruit, Mthatha, Mbabane, Maseru, Port Louis, Praia, Moroni, Malabo
""")


AMERICA = _names("""
New York, Los Angeles, Chicago, Houston, Philadelphia, San Antonio, San Diego, Dallas, Jacksonville,
Indianapolis, San Francisco, Seattle, Denver, Boston, Nashville, Detroit, Oklahoma City, Portland,
Las Vegas, Louisville, Baltimore, Milwaukee, Albuquerque, Tucson, Fresno, Sacramento, Atlanta,
Miami, Omaha, Minneapolis, Cleveland, Tampa, Pittsburgh, Cincinnati, New Orleans, Anchorage, Salt
Lake City, Kansas City, Raleigh, Boise, Spokane, Tulsa, Wichita, Des Moines, Little Rock, Hartford,
Pasadena, Oakland, San Jose, Anaheim, Chattanooga, Knoxville, El Paso, Baton Rouge, Toronto,
Montreal, Vancouver, Calgary, Edmonton, Ottawa, Winnipeg, Quebec City, Saskatoon, Kelowna, Moncton,
Fredericton, Charlottetown, Whitehorse, Yellowknife, Iqaluit, Mexico City, Guadalajara, Monterrey,
Puebla, Tijuana, Cancun, Acapulco, Oaxaca, Veracruz, Juarez, Hermosillo, Mazatlan, Tampico, Morelia,
Queretaro, Culiacan, Saltillo, Toluca, Guatemala City, San Salvador, Tegucigalpa, Managua, Panama
City, Belmopan, Havana, Santo Domingo, Port-au-Prince, San Juan, Bridgetown, Port of Spain, Sao
Paulo, Rio de Janeiro, Brasilia, Fortaleza, Belo Horizonte, Manaus, Curitiba, Recife, Porto Alegre,
Belem, Goiania, Campinas, Florianopolis, Buenos Aires, Mendoza, La Plata, Mar del Plata, Tucuman,
Ushuaia, Montevideo, Asuncion, La Paz, Sucre, Cochabamba, Lima, Cusco, Arequipa, Iquitos, Quito,
Guayaquil, Bogota, Medellin, Cali, Barranquilla, Caracas, Maracaibo, Barquisimeto, Paramaribo,
Valparaiso, Antofagasta, Punta Arenas, Aguascalientes, San Luis Potosi, Ensenada, Cuernavaca,
Chetumal, Villahermosa, Dayton, Akron, Lansing, Grand Rapids, Fort Worth, Scottsdale, Reno,
Bakersfield, Long Beach, Tallahassee, Shreveport, Lubbock, Amarillo, Sioux Falls, Fargo, Cheyenne,
Juneau, Jersey City, Greensboro, Winston-Salem, Topeka, Cedar Rapids, Mississauga, Thunder Bay,
Sherbrooke, Gatineau, Santa Marta, Bucaramanga, Cucuta, Manizales, Maracay, Salta, Bahia Blanca,
Neuquen, Temuco, Iquique, Puerto Montt, Chiclayo, Piura, Teresina, Maceio, Cuiaba, Londrina,
Camaguey, Holguin, Ponce, Willemstad
""")


# continent -> its cities, in the order of the classes of config/examples/claims.yaml
CONTINENTS = {"Europe": EUROPE, "Asia": ASIA, "Africa": AFRICA, "America": AMERICA}
